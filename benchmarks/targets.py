"""The project's targets, each computed from a run's results and marked met or not met, and
their table in BENCHMARKS.md."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.detectors import SHORT
from benchmarks.markdown import table_head, table_row

TARGET_MODEL = "mlp784"
TARGET_BATCH = "1024"


def _runs(results: dict[str, Any], system: str) -> list[float] | None:
    point = results["throughput"].get(TARGET_MODEL, {}).get(system, {}).get(TARGET_BATCH)
    return None if point is None else point["runs"]


def _best_pyod(results: dict[str, Any]) -> list[float] | None:
    """Per repeat, the faster of PyOD with the configured threads and with 1 thread."""
    runs = [r for r in (_runs(results, "pyod"), _runs(results, "pyod_1t")) if r]
    return [max(vals) for vals in zip(*runs, strict=True)] if runs else None


def _ratios(a: list[float] | None, b: list[float] | None) -> tuple[float | None, float | None]:
    """(median of the per-repeat ratios a_i / b_i, ratio of the medians).

    Repeats are interleaved, so a_i and b_i ran seconds apart under about the same load.
    """
    if not a or not b:
        return None, None
    paired = statistics.median(x / y for x, y in zip(a, b, strict=True) if y)
    return paired, statistics.median(a) / statistics.median(b)


def speed_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed targets from a run_throughput result, each with its value and met / not met.

    Throughput ratios use the median of per-repeat ratios (each pair measured back to back);
    the ratio of the medians is reported next to it.
    """
    ort = _runs(results, "onnxruntime")
    stream = _runs(results, "score_stream")
    one = next(
        (
            lv
            for lv in results["latency"].get(TARGET_MODEL, {}).get("vae_client", [])
            if lv["concurrency"] == 1
        ),
        None,
    )
    where = f"{TARGET_MODEL}, {TARGET_BATCH}-row batches"
    rows: list[tuple[str, str, tuple[float | None, float | None], str, float, str]] = [
        ("Score stream / onnxruntime in-process", where, _ratios(stream, ort), ">=", 0.6, "x"),
        (
            "Score stream / PyOD VAE decision_function (faster of 1 and 2 threads)",
            where,
            _ratios(stream, _best_pyod(results)),
            ">=",
            1.5,
            "x",
        ),
        (
            "vae-client score file to file / onnxruntime in-process",
            where,
            _ratios(_runs(results, "vae_client"), ort),
            ">=",
            0.5,
            "x",
        ),
        (
            "Encode 1 row, p50, one client",
            TARGET_MODEL,
            (one and one["p50_ms"], None),
            "<=",
            0.5,
            " ms",
        ),
        (
            "Encode 1 row, p99, one client",
            TARGET_MODEL,
            (one and one["p99_ms"], None),
            "<=",
            2.0,
            " ms",
        ),
    ]
    out = []
    for name, measured_on, (value, of_medians), op, bound, unit in rows:
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append(
            {
                "target": name,
                "measured_on": measured_on,
                "value": None if value is None else round(value, 3),
                "ratio_of_medians": None if of_medians is None else round(of_medians, 3),
                "bound": f"{op} {bound:g}{unit}",
                "met": met,
            }
        )
    return out


def quality_targets(quality: dict[str, Any]) -> list[dict[str, Any]]:
    """The quality targets from a run_quality result, in speed_targets' shape."""
    out = []
    for name, t in quality.get("targets", {}).items():
        beaten = [SHORT.get(m, m) for m, ok in t["at_least"].items() if not ok]
        out.append(
            {
                "target": "our best score's AUROC >= PyOD VAE, IsolationForest and PCA",
                "measured_on": name,
                "value": round(t["our_best_auroc"], 4),
                "bound": ">= every other method"
                + (f" (below: {', '.join(beaten)})" if beaten else ""),
                "met": not beaten,
            }
        )
    det = quality.get("determinism")
    if det:
        out.append(
            {
                "target": "our scores identical run to run (same model and rows)",
                "measured_on": f"{det['ours_models_checked']} models",
                "value": None,
                "bound": "bitwise",
                "met": bool(det["ours_identical"]),
            }
        )
    return out


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """Markdown table of targets (speed and quality ones have the same keys).

    Throughput ratios show the median of per-repeat ratios, then the ratio of the medians.
    """
    lines = table_head(["target", "measured on", "this run", "bound", "verdict"])
    for t in targets:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        if t.get("ratio_of_medians") is not None:
            value += f" (ratio of medians {t['ratio_of_medians']:.3g})"
        verdict = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(table_row([t["target"], t["measured_on"], value, t["bound"], verdict]))
    return "\n".join(lines) + "\n"
