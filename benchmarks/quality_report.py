"""Markdown tables of a run_quality result: AUROC/AUPRC per method, per normal digit, and
training wall time, with the PyOD settings and the machine they came from."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.detectors import LABELS, METHODS, PYOD_VARIANTS, SHORT
from benchmarks.markdown import load_span, minutes, table_head, table_row


def _f(value: float, std: float | None = None) -> str:
    return f"{value:.3f}" if not std else f"{value:.3f} ± {std:.3f}"


def _med_min(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f})"


def _summary_lines(results: dict[str, Any]) -> list[str]:
    """Mean AUROC/AUPRC of every method per data set, anomaly shares and our best score."""
    datasets = results["datasets"]
    n_seeds = len(results["settings"]["model_seeds"])
    header = ["method"]
    for name in datasets:
        what = "mean of normal digits" if name == "digits" else "benign normal"
        header += [f"{name} AUROC ({what})", f"{name} AUPRC"]
    lines = [
        f"### Anomaly quality, one-class protocol (mean of {n_seeds} model seeds; ± is the "
        "std over seeds)",
        "",
        *table_head(header),
    ]
    for method in METHODS:
        cells = [LABELS[method]]
        for ds in datasets.values():
            m = ds["mean"][method]
            cells += [
                _f(m["auroc"], m.get("auroc_std_over_seeds")),
                _f(m["auprc"], m.get("auprc_std_over_seeds")),
            ]
        lines.append(table_row(cells))
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
    return lines


def _per_digit_lines(results: dict[str, Any]) -> list[str]:
    """AUROC and AUPRC of every method with each digit as the normal class."""
    if "digits" not in results["datasets"]:
        return []
    n_seeds = len(results["settings"]["model_seeds"])
    digits = results["datasets"]["digits"]
    lines: list[str] = []
    for key, title in (("auroc", "AUROC"), ("auprc", "AUPRC")):
        lines += ["", f"### {title} per normal digit (mean of {n_seeds} seeds)", ""]
        lines += table_head(["digit", *(SHORT[m] for m in METHODS)])
        for digit, c in digits["normal_classes"].items():
            lines.append(table_row([digit, *(_f(c["mean"][m][key]) for m in METHODS)]))
        mean = digits["mean"]
        lines.append(table_row(["**mean**", *(f"**{_f(mean[m][key])}**" for m in METHODS)]))
    return lines


def _quality_lines(results: dict[str, Any]) -> list[str]:
    det = results["determinism"]
    return [
        *_summary_lines(results),
        *_per_digit_lines(results),
        "",
        f"Our scores identical run to run: **{det['ours_identical']}** "
        f"({det['ours_models_checked']} models; {det['ours_check']}). PyOD's VAE identical "
        f"across two decision_function calls: {det['pyod_identical']} (largest AUROC change "
        f"between two calls {det['pyod_max_abs_auroc_change_across_calls']:.4f}).",
    ]


def _timing_lines(results: dict[str, Any]) -> list[str]:
    """Training wall time: ours to early stop and PyOD's fit, on all rows and on the splits."""
    timing = results.get("training_time") or {}
    datasets = results["datasets"]
    variants = list(PYOD_VARIANTS)
    n_seeds = len(results["settings"]["model_seeds"])
    lines = [
        "",
        f"### Training wall time, seconds: median (min) over {n_seeds} seeds",
        "",
        *table_head(
            [
                "data",
                "rows (train/val)",
                "ours: to early stop",
                "ours: epochs",
                *(f"{SHORT[v]} fit" for v in variants),
            ]
        ),
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
        lines.append(table_row(cells))
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
        lines.append(table_row(cells))
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
        f"average {load_span(results)}; the run took {minutes(results['runtime_seconds'])}.",
    ]
    return "\n".join(lines) + "\n"
