"""vaeserve.training."""
