"""Smoke test of the anomaly-quality benchmark: one digit, one seed, a short epoch budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.detectors import METHODS, OUR_SCORES
from benchmarks.quality import main
from benchmarks.quality_report import markdown_tables


@pytest.mark.slow
def test_quick_quality_one_digit(tmp_path: Path) -> None:
    output = tmp_path / "quality.json"
    argv = ["--quick", "--digits", "0", "--no-breast-cancer", "--no-timing", "--epochs", "20"]
    assert main([*argv, "--output", str(output), "--workdir", str(tmp_path / "work")]) == 0
    results = json.loads(output.read_text())

    assert {"machine", "settings", "datasets", "determinism", "targets"} <= results.keys()
    for key in ("platform", "cpu_count", "python", "packages"):
        assert key in results["machine"]
    assert {"torch", "scikit-learn", "pyod"} <= results["machine"]["packages"].keys()
    assert results["settings"]["model_seeds"] == [0]
    assert set(results["settings"]["pyod"]["variants"]) == {"pyod_vae", "pyod_vae_kl"}

    digits = results["datasets"]["digits"]
    assert list(digits["normal_classes"]) == ["0"]
    split = digits["normal_classes"]["0"]
    assert split["n_train"] > 0 and 0 < split["n_test_anomalies"] < split["n_test"]
    run = split["seeds"]["0"]
    assert set(run["metrics"]) == set(METHODS)
    for method in METHODS:
        for key in ("auroc", "auprc"):
            assert 0.0 <= run["metrics"][method][key] <= 1.0
            assert digits["mean"][method][key] == pytest.approx(run["metrics"][method][key])
    for score in OUR_SCORES:
        assert 0.5 < run["metrics"][f"ours_{score}"]["auroc"] <= 1.0
    assert run["ours"]["epochs_run"] <= 20
    assert run["ours"]["scores_identical_across_sessions"] is True
    assert results["determinism"]["ours_identical"] is True
    assert results["determinism"]["ours_models_checked"] == 1

    tables = markdown_tables(results)
    assert "| **mean** |" in tables and "ours: neg_elbo" in tables
