"""Anomaly-detection quality and training time, next to PyOD's VAE, IsolationForest and PCA.

The one-class protocol (`vaeserve.training.one_class_split`, split seed 0): the normal rows are
split 50/50 into train and test, every anomalous row goes to test. On builtin:digits each digit
is the normal class in turn; on builtin:breast_cancer the benign rows are. For each model seed
our VAE is trained with TrainConfig defaults on the training rows, exported with
`export_model`, and the test rows are scored by the exported scorer.onnx under onnxruntime
(CPU). AUROC and AUPRC treat anomalies as the positive class.

    python -m benchmarks.quality [--seeds 3] [--quick] [--output benchmarks/results/quality.json]

`run_quality(...)` returns the results dict and `markdown_tables(results)` renders it, for a
module that assembles BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import load_average, machine_description

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "quality.json"
SPLIT_SEED = 0
OUR_SCORES = ("kl", "recon_nll", "neg_elbo")
THREADS = 2

# PyOD's VAE with an architecture like ours (encoder 256-128, latent 8, decoder 128-256, no
# dropout; ours has none). epoch_num=250 at batch_size=32 gives about as many gradient steps
# as our early-stopped runs take on the one-class splits with the default step budget
# (TrainConfig.budget): about 500 on a digit's 90 rows (PyOD: 2 steps per epoch, it drops the
# last partial batch; ours: 1 step per epoch on 72 rows after holding out 20% for validation)
# and about 1300 on breast_cancer's 178. Everything else is PyOD's default.
PYOD_COMMON: dict[str, Any] = {
    "encoder_neuron_list": [256, 128],
    "decoder_neuron_list": [128, 256],
    "latent_dim": 8,
    "dropout_rate": 0.0,
    "epoch_num": 250,
    "batch_size": 32,
    "lr": 1e-3,
    "beta": 1.0,
    "preprocessing": True,
    "device": "cpu",
    "verbose": 0,
}
# PyOD clamps the batch-mean KL term to [0, capacity]: its default capacity=0 removes the KL
# term from the loss (a noisy autoencoder); capacity=inf keeps the full beta-VAE objective.
PYOD_VARIANTS: dict[str, dict[str, Any]] = {
    "pyod_vae": {"capacity": 0.0},
    "pyod_vae_kl": {"capacity": math.inf},
}
METHODS = (
    *(f"ours_{s}" for s in OUR_SCORES),
    *PYOD_VARIANTS,
    "isolation_forest",
    "pca",
)
LABELS = {
    "ours_kl": "ours: kl",
    "ours_recon_nll": "ours: recon_nll",
    "ours_neg_elbo": "ours: neg_elbo",
    "pyod_vae": "PyOD VAE (capacity 0, default)",
    "pyod_vae_kl": "PyOD VAE (capacity inf)",
    "isolation_forest": "IsolationForest (300 trees)",
    "pca": "PCA recon. (90% var.)",
}
SHORT = {
    "ours_kl": "ours kl",
    "ours_recon_nll": "ours recon",
    "ours_neg_elbo": "ours -ELBO",
    "pyod_vae": "PyOD VAE",
    "pyod_vae_kl": "PyOD VAE (KL)",
    "isolation_forest": "IForest",
    "pca": "PCA",
}
DATASETS = {"digits": "builtin:digits", "breast_cancer": "builtin:breast_cancer"}

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def pyod_settings(epochs: int | None = None) -> dict[str, dict[str, Any]]:
    """The exact keyword arguments of each PyOD VAE variant (random_state is the seed)."""
    common = dict(PYOD_COMMON)
    if epochs is not None:
        common["epoch_num"] = epochs
    return {name: {**common, **extra} for name, extra in PYOD_VARIANTS.items()}


def metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC with anomalies (y == 1) as the positive class; higher score = anomalous."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {
        "auroc": float(roc_auc_score(y, scores)),
        "auprc": float(average_precision_score(y, scores)),
    }


def onnx_scores(scorer: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Score rows with a fresh onnxruntime session (CPU) on an exported scorer.onnx."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(scorer), options, providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"], session.get_providers()
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})
    return dict(zip(names, outputs, strict=True))


def isolation_forest_scores(
    train_x: np.ndarray, test_x: np.ndarray, seed: int
) -> tuple[np.ndarray, float]:
    """IsolationForest(n_estimators=300, random_state=seed); returns (scores, fit seconds)."""
    from sklearn.ensemble import IsolationForest

    started = time.perf_counter()
    model = IsolationForest(n_estimators=300, random_state=seed).fit(train_x)
    seconds = time.perf_counter() - started
    return -model.score_samples(test_x), seconds


def pca_scores(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, float]:
    """Squared reconstruction error of a PCA keeping 90% of the variance of the standardised
    training rows (deterministic: the same for every seed); returns (scores, fit seconds)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    scaler = StandardScaler().fit(train_x)
    pca = PCA(n_components=0.9, svd_solver="full").fit(scaler.transform(train_x))
    seconds = time.perf_counter() - started
    z = scaler.transform(test_x)
    recon = pca.inverse_transform(pca.transform(z))
    return ((z - recon) ** 2).sum(axis=1), seconds


def fit_pyod(
    train_x: np.ndarray, variant: str, seed: int, epochs: int | None = None
) -> tuple[Any, float, float]:
    """Fit one PyOD VAE variant; returns (detector, wall seconds, CPU seconds)."""
    from pyod.models.vae import VAE

    detector = VAE(random_state=seed, **pyod_settings(epochs)[variant])
    started, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector.fit(train_x)
    return detector, time.perf_counter() - started, time.process_time() - cpu


def train_ours(
    data: str, run_dir: Path, seed: int, epochs: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Train our VAE with TrainConfig defaults on `data`; returns (TrainResult, a dict of wall
    seconds, CPU seconds, epochs and posterior-collapse warnings)."""
    from vaeserve.training import PosteriorCollapseWarning, TrainConfig, train

    overrides = {} if epochs is None else {"epochs": epochs}
    config = TrainConfig(data=data, run_dir=str(run_dir), progress=False, seed=seed, **overrides)
    started, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    return result, {
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "active_units": result.best_metrics["active_units"],
        "collapse_warnings": sum(issubclass(w.category, PosteriorCollapseWarning) for w in caught),
    }


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
    from vaeserve.export import export_model

    split_dir = workdir / f"{name}-{normal}"
    split_dir.mkdir(parents=True, exist_ok=True)
    train_file = split_dir / "train.npy"
    np.save(train_file, train_x)
    per_seed: dict[str, Any] = {}
    for seed in seeds:
        row: dict[str, Any] = {}
        started = time.perf_counter()
        result, ours_info = train_ours(str(train_file), split_dir / f"run-s{seed}", seed, epochs)
        train_s = ours_info["train_seconds"]
        t0 = time.perf_counter()
        exported = export_model(result.run_dir, split_dir / "repo", f"{name}-{normal}-s{seed}")
        export_s = time.perf_counter() - t0
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
            f"all {time.perf_counter() - started:.1f}s)"
        )
    return {
        "n_train": len(train_x),
        "n_test": len(test_x),
        "n_test_anomalies": int(y.sum()),
        "anomaly_fraction": float(y.mean()),
        "seeds": per_seed,
        "mean": _mean_over_seeds(per_seed),
    }


def _mean_over_seeds(per_seed: dict[str, Any]) -> dict[str, dict[str, float]]:
    out = {}
    for method in METHODS:
        entry = {}
        for key in ("auroc", "auprc"):
            values = [s["metrics"][method][key] for s in per_seed.values()]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        out[method] = entry
    return out


def _dataset_mean(classes: dict[str, Any], seeds: Sequence[int]) -> dict[str, dict[str, float]]:
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


def _targets(datasets: dict[str, Any]) -> dict[str, Any]:
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


def run_quality(
    seeds: Sequence[int] = (0, 1, 2),
    digits: Sequence[int] = tuple(range(10)),
    breast_cancer: bool = True,
    quality: bool = True,
    timing: bool = True,
    epochs: int | None = None,
    workdir: str | Path | None = None,
    log: Log | None = _stderr,
) -> dict[str, Any]:
    """Run the quality and training-time benchmark and return its results.

    `quality=False` runs only the training-time part (to re-measure it on a quiet machine);
    `epochs` overrides both our epoch budget and PyOD's epoch_num (smoke tests only);
    `workdir` keeps the runs and exported models (a temporary folder otherwise).
    """
    import torch

    from vaeserve.training import TrainConfig, one_class_split
    from vaeserve.training.data import load_builtin

    torch.set_num_threads(THREADS)
    say = log or (lambda _message: None)
    started = time.perf_counter()
    machine = machine_description()
    ours_config = {
        k: v
        for k, v in TrainConfig().to_dict().items()
        if k not in ("data", "run_dir", "progress", "seed")
    }
    if epochs is not None:
        ours_config["epochs"] = epochs
    settings = {
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
    context = (
        nullcontext(str(workdir))
        if workdir is not None
        else tempfile.TemporaryDirectory(prefix="vaeserve-quality-")
    )
    with context as tmp:
        work = Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
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
                "mean": _dataset_mean(classes, seeds),
            }
        training_time = {}
        if timing:
            for name in dict.fromkeys(n for n, _ in plan):
                say(f"training time: {name}")
                training_time[name] = _training_time(name, seeds, work, epochs, say)
    models = [
        s
        for ds in datasets.values()
        for c in ds["normal_classes"].values()
        for s in c["seeds"].values()
    ]
    pyod_calls = [info for s in models for info in s["pyod"].values()]
    determinism = {
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
    return _jsonable(
        {
            "benchmark": "quality",
            "machine": machine,
            "load_average_end": load_average(),
            "settings": settings,
            "datasets": datasets,
            "determinism": determinism,
            "targets": _targets(datasets),
            "training_time": training_time,
            "runtime_seconds": time.perf_counter() - started,
        }
    )


def _f(value: float, std: float | None = None) -> str:
    return f"{value:.3f}" if not std else f"{value:.3f} ± {std:.3f}"


def _quality_lines(results: dict[str, Any]) -> list[str]:
    datasets = results["datasets"]
    n_seeds = len(results["settings"]["model_seeds"])
    lines = [
        f"### Anomaly quality, one-class protocol (mean of {n_seeds} model seeds; ± is the "
        "std over seeds)",
        "",
    ]
    header = ["method"]
    for name in datasets:
        what = "mean of normal digits" if name == "digits" else "benign normal"
        header += [f"{name} AUROC ({what})", f"{name} AUPRC"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in METHODS:
        cells = [LABELS[method]]
        for ds in datasets.values():
            m = ds["mean"][method]
            cells += [
                _f(m["auroc"], m.get("auroc_std_over_seeds")),
                _f(m["auprc"], m.get("auprc_std_over_seeds")),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    shares = {
        name: statistics.fmean(c["anomaly_fraction"] for c in ds["normal_classes"].values())
        for name, ds in datasets.items()
    }
    fractions = ", ".join(f"{name} {share:.2f}" for name, share in shares.items())
    lines += ["", f"Share of anomalies in test (AUPRC of a random score): {fractions}.", ""]
    for name, t in results.get("targets", {}).items():
        mean = datasets[name]["mean"]
        beaten = [
            f"{SHORT[m]} ({mean[m]['auroc']:.4f})" for m, ok in t["at_least"].items() if not ok
        ]
        verdict = "at least every other method" if not beaten else "below " + ", ".join(beaten)
        lines.append(
            f"- {name}: our best score is `{t['our_best'][5:]}` (AUROC "
            f"{t['our_best_auroc']:.4f}), {verdict}."
        )
    if "digits" in datasets:
        classes = datasets["digits"]["normal_classes"]
        for key, title in (("auroc", "AUROC"), ("auprc", "AUPRC")):
            lines += ["", f"### {title} per normal digit (mean of {n_seeds} seeds)", ""]
            lines += [
                "| digit | " + " | ".join(SHORT[m] for m in METHODS) + " |",
                "|" + "---|" * (len(METHODS) + 1),
            ]
            for digit, c in classes.items():
                cells = [_f(c["mean"][m][key]) for m in METHODS]
                lines.append(f"| {digit} | " + " | ".join(cells) + " |")
            mean = datasets["digits"]["mean"]
            lines.append(
                "| **mean** | " + " | ".join(f"**{_f(mean[m][key])}**" for m in METHODS) + " |"
            )
    det = results["determinism"]
    lines += [
        "",
        f"Our scores identical run to run: **{det['ours_identical']}** "
        f"({det['ours_models_checked']} models; {det['ours_check']}). PyOD's VAE identical "
        f"across two decision_function calls: {det['pyod_identical']} (largest AUROC change "
        f"between two calls {det['pyod_max_abs_auroc_change_across_calls']:.4f}).",
    ]
    return lines


def _med_min(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f})"


def _timing_lines(results: dict[str, Any]) -> list[str]:
    timing = results.get("training_time") or {}
    datasets = results["datasets"]
    variants = list(PYOD_VARIANTS)
    n_seeds = len(results["settings"]["model_seeds"])
    lines = [
        "",
        f"### Training wall time, seconds: median (min) over {n_seeds} seeds",
        "",
        "| data | rows (train/val) | ours: to early stop | ours: epochs | "
        + " | ".join(f"{SHORT[v]} fit" for v in variants)
        + " |",
        "|" + "---|" * (4 + len(variants)),
    ]
    for name, t in timing.items():
        runs = t["ours"]["runs"]
        stopped = sum(r["stopped_early"] for r in runs)
        cells = [
            f"{name}, all rows",
            f"{t['train_rows']}/{t['rows'] - t['train_rows']}",
            _med_min([r["seconds"] for r in runs]),
            f"{t['ours']['median_epochs']:g} ({stopped}/{len(runs)} stopped early)",
            *(_med_min(t["pyod"][v]["seconds"]) for v in variants),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, ds in datasets.items():
        runs = [s for c in ds["normal_classes"].values() for s in c["seeds"].values()]
        n_train = statistics.median(c["n_train"] for c in ds["normal_classes"].values())
        stopped = sum(s["ours"]["stopped_early"] for s in runs)
        cells = [
            f"{name}, one-class splits ({len(runs)} runs)",
            f"{n_train:g} split 80/20 (PyOD: all)",
            _med_min([s["ours"]["train_seconds"] for s in runs]),
            f"{statistics.median(s['ours']['epochs_run'] for s in runs):g} "
            f"({stopped}/{len(runs)} stopped early)",
            *(_med_min([s["pyod"][v]["fit_seconds"] for s in runs]) for v in variants),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    loads = [
        r["load_average_before"][0]
        for t in timing.values()
        for r in t["ours"]["runs"]
        if r.get("load_average_before")
    ]
    if loads:
        lines += [
            "",
            f"1-minute load average before the all-rows runs: {min(loads):.1f} to "
            f"{max(loads):.1f} on {results['machine']['cpu_count']} CPUs. Above the CPU count "
            "other work shares the machine, and torch's two intra-op threads then slow down "
            "many times over: the minimum is the better estimate of an unshared machine.",
        ]
    return lines


def markdown_tables(results: dict[str, Any]) -> str:
    """Markdown tables of a `run_quality` result: summary, per digit, training time."""
    lines: list[str] = []
    if results["datasets"]:
        lines += _quality_lines(results)
    if results.get("training_time") or results["datasets"]:
        lines += _timing_lines(results)
    pyod = results["settings"]["pyod"]["variants"]
    common = {k: v for k, v in next(iter(pyod.values())).items() if k != "capacity"}
    machine = results["machine"]
    lines += [
        "",
        "PyOD settings: `pyod.models.vae.VAE("
        + ", ".join(f"{k}={v!r}" for k, v in common.items())
        + ", random_state=seed)` with capacity 0.0 (its default: the KL term is clamped to "
        "zero) or inf (the full KL term); other arguments at their defaults.",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, Python "
        f"{machine['python']}, torch threads {results['settings']['torch_threads']}; load "
        f"average at start {machine['load_average']}, at end {results.get('load_average_end')}; "
        f"the run took {results['runtime_seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


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
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    tables = markdown_tables(results)
    if args.markdown:
        args.markdown.write_text(tables)
    print(tables)
    _stderr(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
