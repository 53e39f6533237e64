"""Smoke test of the throughput benchmark's quick mode with tiny sizes: structure only, no
speed assertions (the machine is shared and small)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks.run import render
from benchmarks.systems import SYSTEMS
from benchmarks.targets import speed_targets, targets_table
from benchmarks.throughput import ThroughputConfig, run_throughput
from benchmarks.throughput_report import markdown_tables


@pytest.mark.slow
def test_quick_throughput_tiny(tmp_path: Path) -> None:
    config = dataclasses.replace(
        ThroughputConfig.quick(),
        batches=(1, 1024),
        target_s=0.01,
        client_target_s=0.01,
        max_bytes=4 << 20,
        concurrency=(1, 2),
        latency_s=0.1,
        latency_warmup=2,
    )
    results = run_throughput(config, tmp_path / "work")
    json.dumps(results)  # JSON-ready

    assert {"machine", "settings", "models", "throughput", "latency", "memory"} <= results.keys()
    assert set(results["throughput"]) == {"mlp784", "digits"}
    assert results["models"]["mlp784"]["input_dim"] == 784
    assert results["models"]["mlp784"]["hidden"] == [400]
    assert results["models"]["mlp784"]["latent_dim"] == 20
    assert results["models"]["digits"]["input_dim"] == 64
    for per_system in results["throughput"].values():
        assert set(per_system) == set(SYSTEMS)
        for system, points in per_system.items():
            assert set(points) == {"1", "1024"}
            for point in points.values():
                assert point["rows_per_s"] > 0 and point["rows"] >= 1
                assert len(point["runs"]) == config.repeats
                if system == "vae_client":
                    assert point["wall_rows_per_s"] > 0 and point["peak_rss_mb"] > 0
    for lat in results["latency"].values():
        assert [lv["concurrency"] for lv in lat["vae_client"]] == [1, 2]
        for lv in lat["vae_client"]:
            assert lv["calls"] > 0 and 0 < lv["p50_ms"] <= lv["p99_ms"]
        assert lat["raw_stub"]["calls"] > 0
    assert results["memory"]["server_peak_rss_mb"] > 0
    assert results["memory"]["vae_client_peak_rss_mb"] > 0

    targets = speed_targets(results)
    assert len(targets) == 5
    assert all(isinstance(t["met"], bool) and t["value"] is not None for t in targets)
    tables = markdown_tables(results) + targets_table(targets)
    assert "Throughput, rows/s: `mlp784`" in tables and "Encode" in tables

    report = render(
        {
            "quick": True,
            "started": "now",
            "runtime_seconds": 1.0,
            "machine": results["machine"],
            "load_average": {"start": [0.0, 0.0, 0.0]},
            "throughput": results,
            "quality": None,
            "quality_note": "skipped in this test",
            "targets": targets,
        }
    )
    assert report.startswith("# Benchmarks") and "skipped in this test" in report
