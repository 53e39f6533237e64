"""Anomaly-detection quality and training time, next to PyOD's VAE, IsolationForest and PCA.

The one-class protocol (`vaeserve.training.one_class_split`, split seed 0): the normal rows are
split 50/50 into train and test, every anomalous row goes to test. On builtin:digits each digit
is the normal class in turn; on builtin:breast_cancer the benign rows are. For each model seed
our VAE is trained with TrainConfig defaults on the training rows, exported with
`export_model`, and the test rows are scored by the exported scorer.onnx under onnxruntime
(CPU). AUROC and AUPRC treat anomalies as the positive class.

    python -m benchmarks.quality [--seeds 3] [--quick] [--output benchmarks/results/quality.json]

`run_quality(...)` returns the results dict; `benchmarks.quality_report.markdown_tables`
renders it. The detectors compared are in `benchmarks.detectors`.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.detectors import (
    METHODS,
    OUR_SCORES,
    PYOD_VARIANTS,
    SHORT,
    THREADS,
    fit_pyod,
    isolation_forest_scores,
    metrics,
    onnx_scores,
    pca_scores,
    pyod_settings,
)
from benchmarks.machine import load_average, machine_description
from benchmarks.measure import Stopwatch
from benchmarks.prepare import export_timed, train_model, work_folder
from benchmarks.progress import log as stderr_log
from benchmarks.quality_report import markdown_tables
from benchmarks.quality_summary import (
    best_against_others,
    dataset_mean,
    determinism,
    mean_over_seeds,
)
from benchmarks.record import results_record, write_results

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "quality.json"
SPLIT_SEED = 0
DATASETS = {"digits": "builtin:digits", "breast_cancer": "builtin:breast_cancer"}

Log = Callable[[str], None]


def _jsonable(value: Any) -> Any:
    """`value` with infinite floats as the strings "inf" / "-inf" (JSON has no infinity)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def train_ours(
    data: str, run_dir: Path, seed: int, epochs: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Train our VAE with TrainConfig defaults on `data`; returns (TrainResult, a dict of wall
    seconds, CPU seconds, epochs and posterior-collapse warnings)."""
    from vaeserve.training import TrainConfig

    overrides = {} if epochs is None else {"epochs": epochs}
    config = TrainConfig(data=data, run_dir=str(run_dir), progress=False, seed=seed, **overrides)
    return train_model(config)


def _evaluate_split(
    name: str,
    normal: str,
    train_x: np.ndarray,
    test_x: np.ndarray,
    y: np.ndarray,
    seeds: Sequence[int],
    workdir: Path,
    epochs: int | None,
    log: Log,
) -> dict[str, Any]:
    """Every method on one one-class split, for every seed."""
    split_dir = workdir / f"{name}-{normal}"
    split_dir.mkdir(parents=True, exist_ok=True)
    train_file = split_dir / "train.npy"
    np.save(train_file, train_x)
    per_seed: dict[str, Any] = {}
    for seed in seeds:
        row: dict[str, Any] = {}
        clock = Stopwatch()
        result, ours_info = train_ours(str(train_file), split_dir / f"run-s{seed}", seed, epochs)
        train_s = ours_info["train_seconds"]
        exported, export_s = export_timed(
            result.run_dir, split_dir / "repo", f"{name}-{normal}-s{seed}"
        )
        scorer = exported.model_dir / "scorer.onnx"
        first = onnx_scores(scorer, test_x)
        second = onnx_scores(scorer, test_x)
        identical = all(first[k].tobytes() == second[k].tobytes() for k in first)
        assert identical, f"{name} {normal} seed {seed}: scores differ between two sessions"
        for score in OUR_SCORES:
            row[f"ours_{score}"] = metrics(y, first[score])
        ours_info["export_seconds"] = export_s
        ours_info["scores_identical_across_sessions"] = identical
        pyod_info: dict[str, Any] = {}
        for variant in PYOD_VARIANTS:
            detector, fit_s, fit_cpu = fit_pyod(train_x, variant, seed, epochs)
            s1 = detector.decision_function(test_x)
            s2 = detector.decision_function(test_x)
            row[variant] = metrics(y, s1)
            again = metrics(y, s2)
            pyod_info[variant] = {
                "fit_seconds": fit_s,
                "fit_cpu_seconds": fit_cpu,
                "scores_identical_across_calls": bool(np.array_equal(s1, s2)),
                "max_abs_score_diff_across_calls": float(np.max(np.abs(s1 - s2))),
                "auroc_second_call": again["auroc"],
                "auprc_second_call": again["auprc"],
            }
        if_scores, if_s = isolation_forest_scores(train_x, test_x, seed)
        row["isolation_forest"] = metrics(y, if_scores)
        pca_s, pca_fit_s = pca_scores(train_x, test_x)
        row["pca"] = metrics(y, pca_s)
        per_seed[str(seed)] = {
            "metrics": row,
            "ours": ours_info,
            "pyod": pyod_info,
            "baseline_fit_seconds": {"isolation_forest": if_s, "pca": pca_fit_s},
        }
        log(
            f"  {name} normal={normal} seed={seed}: "
            + ", ".join(f"{SHORT[m]} {row[m]['auroc']:.3f}" for m in METHODS)
            + f"  (train {train_s:.1f}s, {result.epochs_run} epochs; export {export_s:.1f}s; "
            f"all {clock.wall_s:.1f}s)"
        )
    return {
        "n_train": len(train_x),
        "n_test": len(test_x),
        "n_test_anomalies": int(y.sum()),
        "anomaly_fraction": float(y.mean()),
        "seeds": per_seed,
        "mean": mean_over_seeds(per_seed),
    }


def _training_time(
    name: str, seeds: Sequence[int], workdir: Path, epochs: int | None, log: Log
) -> dict[str, Any]:
    """Wall time of our training to early stop on all rows of a data set (TrainConfig
    defaults), next to PyOD's VAE fit on the same training rows."""
    from vaeserve.training import TrainConfig
    from vaeserve.training.loop import prepare

    runs = []
    pyod_runs: dict[str, list[float]] = {v: [] for v in PYOD_VARIANTS}
    pyod_cpu: dict[str, list[float]] = {v: [] for v in PYOD_VARIANTS}
    n_rows = n_train = 0
    for seed in seeds:
        run_dir = workdir / f"timing-{name}-s{seed}"
        load_before = load_average()
        result, info = train_ours(DATASETS[name], run_dir, seed, epochs)
        seconds = info["train_seconds"]
        runs.append(
            {
                "seed": seed,
                "seconds": seconds,
                "cpu_seconds": info["train_cpu_seconds"],
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
                "seconds_per_epoch": seconds / max(1, result.epochs_run),
                "collapse_warnings": info["collapse_warnings"],
                "load_average_before": load_before,
            }
        )
        prep = prepare(TrainConfig(data=DATASETS[name], seed=seed))
        train_x = prep.x_train.numpy()
        n_train, n_rows = len(train_x), len(train_x) + len(prep.x_val)
        for variant in PYOD_VARIANTS:
            _, fit_s, fit_cpu = fit_pyod(train_x, variant, seed, epochs)
            pyod_runs[variant].append(fit_s)
            pyod_cpu[variant].append(fit_cpu)
        log(
            f"  timing {name} seed={seed}: ours {seconds:.1f}s ({result.epochs_run} epochs, "
            f"early stop {result.stopped_early}); "
            + ", ".join(f"{v} fit {pyod_runs[v][-1]:.1f}s" for v in PYOD_VARIANTS)
        )
    return {
        "data": DATASETS[name],
        "rows": n_rows,
        "train_rows": n_train,
        "ours": {
            "runs": runs,
            "median_seconds": statistics.median(r["seconds"] for r in runs),
            "median_epochs": statistics.median(r["epochs_run"] for r in runs),
        },
        "pyod": {
            v: {
                "seconds": s,
                "cpu_seconds": pyod_cpu[v],
                "median_seconds": statistics.median(s),
            }
            for v, s in pyod_runs.items()
        },
        "load_average_end": load_average(),
    }


def _settings(
    seeds: Sequence[int],
    digits: Sequence[int],
    breast_cancer: bool,
    quality: bool,
    timing: bool,
    epochs: int | None,
) -> dict[str, Any]:
    """What the results were measured with: the protocol and every method's settings."""
    from vaeserve.training import TrainConfig

    ours_config = {
        k: v
        for k, v in TrainConfig().to_dict().items()
        if k not in ("data", "run_dir", "progress", "seed")
    }
    if epochs is not None:
        ours_config["epochs"] = epochs
    return {
        "protocol": (
            "one-class: normal rows split 50/50 into train and test (split seed "
            f"{SPLIT_SEED}), all anomalous rows in test; anomalies are the positive class"
        ),
        "split_seed": SPLIT_SEED,
        "model_seeds": list(seeds),
        "digits": list(digits),
        "breast_cancer": breast_cancer,
        "run_quality": quality,
        "run_timing": timing,
        "torch_threads": THREADS,
        "ours": {
            "train_config": ours_config,
            "scoring": "exported scorer.onnx, onnxruntime CPUExecutionProvider, "
            f"intra_op_num_threads={THREADS}, one batch of all test rows",
        },
        "pyod": {
            "class": "pyod.models.vae.VAE",
            "variants": pyod_settings(epochs),
            "random_state": "the model seed",
            "score": "decision_function (one call; PyOD samples z, so calls differ)",
        },
        "isolation_forest": "sklearn IsolationForest(n_estimators=300, random_state=seed) on "
        "raw features; score = -score_samples",
        "pca": "StandardScaler fitted on training rows, PCA(n_components=0.9, "
        "svd_solver='full'); score = squared reconstruction error in standardised units",
        "timing": "our train() wall time with TrainConfig defaults on all rows (80/20 "
        "train/validation split by the seed), early stopping on; PyOD fit() on the same "
        "training rows",
    }


def run_quality(
    seeds: Sequence[int] = (0, 1, 2),
    digits: Sequence[int] = tuple(range(10)),
    breast_cancer: bool = True,
    quality: bool = True,
    timing: bool = True,
    epochs: int | None = None,
    workdir: str | Path | None = None,
    log: Log | None = stderr_log,
) -> dict[str, Any]:
    """Run the quality and training-time benchmark and return its results.

    `quality=False` runs only the training-time part (to re-measure it on a quiet machine);
    `epochs` overrides both our epoch budget and PyOD's epoch_num (smoke tests only);
    `workdir` keeps the runs and exported models (a temporary folder otherwise).
    """
    import torch

    from vaeserve.training import one_class_split
    from vaeserve.training.data import load_builtin

    torch.set_num_threads(THREADS)
    say = log or (lambda _message: None)
    clock = Stopwatch()
    machine = machine_description()
    settings = _settings(seeds, digits, breast_cancer, quality, timing, epochs)
    with work_folder(workdir, "vaeserve-quality-") as work:
        datasets: dict[str, Any] = {}
        plan = [("digits", str(d)) for d in digits]
        if breast_cancer:
            plan.append(("breast_cancer", "benign"))
        for name in dict.fromkeys(n for n, _ in plan) if quality else ():
            data = load_builtin(name)
            classes = {}
            for normal in (c for n, c in plan if n == name):
                train_ds, test_ds = one_class_split(data, normal, seed=SPLIT_SEED)
                y = (test_ds.labels != normal).astype(np.int64)
                say(f"{name}: normal class {normal} ({len(train_ds)} train, {len(test_ds)} test)")
                classes[normal] = _evaluate_split(
                    name, normal, train_ds.x, test_ds.x, y, seeds, work, epochs, say
                )
            datasets[name] = {
                "data": DATASETS[name],
                "normal_classes": classes,
                "mean": dataset_mean(classes, seeds),
            }
        training_time = {}
        if timing:
            for name in dict.fromkeys(n for n, _ in plan):
                say(f"training time: {name}")
                training_time[name] = _training_time(name, seeds, work, epochs, say)
    body = {
        "settings": settings,
        "datasets": datasets,
        "determinism": determinism(datasets),
        "targets": best_against_others(datasets),
        "training_time": training_time,
    }
    return _jsonable(results_record("quality", machine, body, clock.wall_s))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the benchmark, write the JSON results and print the markdown tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="model seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: one seed, digits 0-2 only"
    )
    parser.add_argument("--digits", help="comma-separated normal digits (default 0-9)")
    parser.add_argument("--no-breast-cancer", action="store_true")
    parser.add_argument("--no-timing", action="store_true", help="skip the training-time runs")
    parser.add_argument("--timing-only", action="store_true", help="only the training-time runs")
    parser.add_argument("--epochs", type=int, help="override the epoch budgets (smoke tests)")
    parser.add_argument("--workdir", help="keep runs and exported models here")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    seeds = range(1 if args.quick else args.seeds)
    digits = (0, 1, 2) if args.quick else tuple(range(10))
    if args.digits:
        digits = tuple(int(d) for d in args.digits.split(","))
    results = run_quality(
        seeds=tuple(seeds),
        digits=digits,
        breast_cancer=not args.no_breast_cancer,
        quality=not args.timing_only,
        timing=not args.no_timing,
        epochs=args.epochs,
        workdir=args.workdir,
    )
    write_results(args.output, results)
    tables = markdown_tables(results)
    if args.markdown:
        args.markdown.write_text(tables)
    print(tables)
    stderr_log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
