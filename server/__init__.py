"""vaeserve.server."""
