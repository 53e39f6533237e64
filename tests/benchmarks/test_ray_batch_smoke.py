"""Smoke test of the batch-scoring benchmark's quick mode: every system runs and the report
renders; no speed assertions (the machine is shared and small)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.ray_batch import RayBatchConfig, run_ray_batch, systems
from benchmarks.ray_batch_report import markdown_report


@pytest.mark.slow
def test_quick_ray_batch(tmp_path: Path) -> None:
    config = RayBatchConfig.quick_config()
    results = run_ray_batch(config, tmp_path / "work")
    json.dumps(results)  # JSON-ready
    assert list(results["systems"]) == [name for name, _, _ in systems(config)]
    for name, record in results["systems"].items():
        assert "error" not in record, (name, record.get("error"))
        assert record["rows"] == config.rows, name
        assert record["rows_per_s"] > 0
    ray_one = results["systems"]["ray_in_process_1"]
    assert len(ray_one["workers"]) == 1 and ray_one["worker_peak_rss_mb"] > 0
    ray_server = results["systems"]["ray_server"]
    assert len(ray_server["workers"]) == config.workers and ray_server["driver_peak_rss_mb"] > 0
    report = markdown_report(results)
    assert "Quick mode" in report and "`ray_server`" in report and "N x" in report
