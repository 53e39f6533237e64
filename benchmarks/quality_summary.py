"""What the quality results conclude: means over seeds and normal classes, our best score
against every other method, and whether scores repeat run to run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.detectors import METHODS, OUR_SCORES, PYOD_VARIANTS


def mean_over_seeds(per_seed: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each method's AUROC/AUPRC on one split: mean and population std over the seeds."""
    out = {}
    for method in METHODS:
        entry = {}
        for key in ("auroc", "auprc"):
            values = [s["metrics"][method][key] for s in per_seed.values()]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        out[method] = entry
    return out


def dataset_mean(classes: dict[str, Any], seeds: Sequence[int]) -> dict[str, dict[str, float]]:
    """Mean over normal classes; the std is over seeds of the per-seed class means."""
    out = {}
    for method in METHODS:
        entry = {}
        for key in ("auroc", "auprc"):
            per_seed = [
                statistics.fmean(
                    c["seeds"][str(s)]["metrics"][method][key] for c in classes.values()
                )
                for s in seeds
            ]
            entry[key] = statistics.fmean(per_seed)
            entry[f"{key}_std_over_seeds"] = statistics.pstdev(per_seed) if len(seeds) > 1 else 0.0
        out[method] = entry
    return out


def best_against_others(datasets: dict[str, Any]) -> dict[str, Any]:
    """Our best score's mean AUROC against each other method, per data set."""
    out = {}
    for name, ds in datasets.items():
        mean = ds["mean"]
        best = max((f"ours_{s}" for s in OUR_SCORES), key=lambda m: mean[m]["auroc"])
        out[name] = {
            "our_best": best,
            "our_best_auroc": mean[best]["auroc"],
            "at_least": {
                m: mean[best]["auroc"] >= mean[m]["auroc"]
                for m in METHODS
                if not m.startswith("ours_")
            },
        }
    return out


def determinism(datasets: dict[str, Any]) -> dict[str, Any]:
    """Whether our scores and PyOD's repeated exactly, over every split and seed."""
    models = [
        s
        for ds in datasets.values()
        for c in ds["normal_classes"].values()
        for s in c["seeds"].values()
    ]
    pyod_calls = [info for s in models for info in s["pyod"].values()]
    return {
        "ours_models_checked": len(models),
        "ours_identical": all(s["ours"]["scores_identical_across_sessions"] for s in models),
        "ours_check": "the test rows scored twice, each with a fresh InferenceSession; all "
        "four outputs compared bitwise",
        "pyod_identical": all(p["scores_identical_across_calls"] for p in pyod_calls),
        "pyod_max_abs_auroc_change_across_calls": max(
            (
                abs(s["pyod"][v]["auroc_second_call"] - s["metrics"][v]["auroc"])
                for s in models
                for v in PYOD_VARIANTS
            ),
            default=0.0,
        ),
    }
