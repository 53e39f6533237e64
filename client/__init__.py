"""vaeserve.client."""
