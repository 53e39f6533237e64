"""Progress lines of a benchmark run, on stderr so that stdout carries only the tables."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    """Print one progress line to stderr at once."""
    print(message, file=sys.stderr, flush=True)
