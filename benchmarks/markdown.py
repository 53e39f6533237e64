"""Markdown pieces the reports share: table rows, number formats, and a run's load averages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def table_row(cells: Iterable[object]) -> str:
    """One markdown table row: `| a | b |`."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_head(columns: Sequence[str]) -> list[str]:
    """A markdown table's header row and its separator."""
    return [table_row(columns), "|" + "---|" * len(columns)]


def thousands(rate: float) -> str:
    """A rate in thousands with one decimal (`12.3k`) from 1000 up, whole below."""
    return f"{rate / 1000:,.1f}k" if rate >= 1000 else f"{rate:,.0f}"


def minutes(seconds: float) -> str:
    """Seconds as minutes with one decimal: `24.5 min`."""
    return f"{seconds / 60:.1f} min"


def load_span(results: dict[str, Any]) -> str:
    """`at start [..], at end [..]`: the load averages a benchmark's results recorded."""
    return (
        f"at start {results['machine']['load_average']}, at end {results.get('load_average_end')}"
    )
