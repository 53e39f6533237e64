"""The explain and drift figures on bundled data, end to end: train small models, export them,
and measure with onnxruntime on rows they never saw. `measure_monitoring(workdir)` returns
what docs/monitoring.md and the benchmark report; tests use the same set-ups."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaeserve.common.drift import DriftReference
from vaeserve.common.manifest import load_manifest
from vaeserve.export.drift_eval import (
    detection_rate,
    false_alarm_rate,
    marginal_false_alarm_rate,
    posteriors,
)
from vaeserve.export.explain_eval import corruption_hit_rate
from vaeserve.export.writer import export_model
from vaeserve.training import TrainConfig, load_dataset, load_model, one_class_split, train

SMALL_MODEL: dict[str, Any] = {"hidden": [64, 32], "latent_dim": 8, "progress": False}


@dataclass
class Exported:
    """An exported model version, the rows held out from its training and validation, and
    how long its export and its drift null took."""

    run_dir: Path
    model_dir: Path
    held_out: np.ndarray
    labels: np.ndarray
    export_seconds: float
    drift_seconds: float


def _train_export(
    workdir: Path, name: str, x: np.ndarray, settings: dict[str, Any], threads: int
) -> tuple[Path, Path, float, float]:
    np.save(workdir / f"{name}.npy", x)
    config = TrainConfig(
        data=str(workdir / f"{name}.npy"),
        run_dir=str(workdir / name),
        threads=threads,
        **{**SMALL_MODEL, **settings},
    )
    run = train(config)
    started = time.perf_counter()
    result = export_model(run.run_dir, workdir / "repo", name)
    return run.run_dir, result.model_dir, time.perf_counter() - started, result.drift_seconds


def digits_with_test_split(workdir: Path, threads: int = 1, test_rows: int = 539) -> Exported:
    """All ten digits: a seeded random `test_rows` held out, the rest trained on (its own
    80/20 train/validation split; the validation rows are the drift reference)."""
    ds = load_dataset("builtin:digits")
    order = np.random.default_rng(0).permutation(len(ds))
    test, rest = np.sort(order[:test_rows]), np.sort(order[test_rows:])
    settings = {"epochs": 25, "batch_size": 64}
    run = _train_export(workdir, "digits", ds.x[rest], settings, threads)
    return Exported(*run[:2], ds.x[test], ds.labels[test], *run[2:])


def one_class(
    workdir: Path, data: str, normal: str, name: str, threads: int = 1, **settings: Any
) -> Exported:
    """The benchmark's one-class protocol: half the normal rows trained on (80/20 again),
    the other half and every other row held out."""
    train_ds, test_ds = one_class_split(load_dataset(data), normal, seed=0)
    defaults = {"epochs": 100, "batch_size": 16}
    run = _train_export(workdir, name, train_ds.x, {**defaults, **settings}, threads)
    return Exported(*run[:2], test_ds.x, test_ds.labels, *run[2:])


def validation_posteriors(model: Exported) -> tuple[np.ndarray, np.ndarray]:
    """(mu, logvar) of the model's validation rows, the rows its drift reference came from."""
    _, state = load_model(model.run_dir)
    return posteriors(model.model_dir, state["val_x"].numpy())


def measure_monitoring(workdir: str | Path, quick: bool = False) -> dict[str, Any]:
    """Every figure of docs/monitoring.md: the explanation's top-1 hit rate on corrupted
    breast-cancer rows, drift false-alarm rates (all digits; one digit, few reference rows)
    and detection rates, and the export time the drift null adds."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    windows, trials = (100, 50) if quick else (1000, 500)
    out: dict[str, Any] = {}

    bc = one_class(
        workdir, "builtin:breast_cancer", "benign", "breast_cancer", epochs=150, batch_size=32
    )
    benign = bc.held_out[bc.labels == "benign"]
    out["explain"] = {
        f"shift_{s:g}sd": corruption_hit_rate(bc.model_dir, benign, s, seed=i).to_dict()
        for i, s in enumerate((3.0, 4.0, 6.0, 10.0))
    }
    out["explain"]["shift_3sd_raw_ranking"] = corruption_hit_rate(
        bc.model_dir, benign, 3.0, seed=0, rank_by_excess=False
    ).to_dict()

    drift: dict[str, Any] = {}
    for key, model, normal, pool_sizes in (
        ("digits", digits_with_test_split(workdir), None, [16, 64, 256]),
        ("digit0", one_class(workdir, "builtin:digits", "0", "digit0"), "0", [16, 32, 64]),
    ):
        manifest = load_manifest(model.model_dir)
        reference = DriftReference.from_manifest(manifest)
        held = model.held_out if normal is None else model.held_out[model.labels == normal]
        mu, logvar = posteriors(model.model_dir, held)
        val_mu, val_logvar = validation_posteriors(model)
        pool = (np.concatenate([val_mu, mu]), np.concatenate([val_logvar, logvar]))
        entry: dict[str, Any] = {
            "reference_rows": reference.reference_rows,
            "null_method": reference.method,
            "export_seconds": model.export_seconds,
            "drift_null_seconds": model.drift_seconds,
            "exported_reference": [
                false_alarm_rate(reference, mu, logvar, w, windows, seed=w).to_dict()
                for w in pool_sizes
            ],
            "over_references": [
                a.to_dict()
                for a in marginal_false_alarm_rate(
                    *pool,
                    reference.reference_rows,
                    pool_sizes,
                    trials,
                    seed=1,
                    method=reference.method,
                )
            ],
        }
        if normal is not None:
            other = posteriors(model.model_dir, model.held_out[model.labels == "1"])
            entry["detection_digit1_mixed_in"] = [
                {
                    "fraction": f,
                    **detection_rate(
                        reference, (mu, logvar), other, w, f, windows // 2, seed=w
                    ).to_dict(),
                }
                for w, f in ((16, 0.25), (32, 0.25), (64, 0.25), (64, 0.1))
            ]
        else:
            labels = model.labels
            entry["detection_class_share"] = []
            for digit, w, f in (("3", 64, 0.5), ("3", 128, 0.25)):
                sel = labels == digit
                entry["detection_class_share"].append(
                    {
                        "digit": digit,
                        "fraction": f,
                        **detection_rate(
                            reference,
                            (mu, logvar),
                            (mu[sel], logvar[sel]),
                            w,
                            f,
                            windows // 2,
                            seed=w,
                        ).to_dict(),
                    }
                )
        drift[key] = entry
    out["drift"] = drift
    return out
