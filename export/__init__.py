"""vaeserve.export."""
