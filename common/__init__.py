"""vaeserve.common."""
