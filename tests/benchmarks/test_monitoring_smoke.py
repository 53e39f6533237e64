"""Smoke test of the monitoring benchmark's cost part: every configuration answers (the
benchmark checks that explain messages come back explained) and the report renders; no speed
assertions (the machine is shared and small). Its figures part runs set-ups that
tests/export/ already tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import monitoring


@pytest.mark.slow
def test_quick_monitoring_cost(tmp_path: Path) -> None:
    out = tmp_path / "monitoring.json"
    argv = ["--quick", "--skip-figures", "--repeats", "1", "--baseline", "", "--output", str(out)]
    assert monitoring.main(argv) == 0
    results = json.loads(out.read_text())
    for size in ("1024", "64"):
        point = results["cost"][size]
        assert set(point) >= {"off", "drift", "explain", "ratios"}
        assert all(point[c]["rows_per_s_median"] > 0 for c in ("off", "drift", "explain"))
        assert set(point["ratios"]) == {"drift/off", "explain/off"}  # no baseline asked for
    report = out.with_suffix(".md").read_text()
    assert "| 1024 | - |" in report and "explain / off" in report
