"""Markdown tables of a run_throughput result: rows/s per system, vae-client file to file,
Encode latency, peak memory and the settings the numbers came from."""

from __future__ import annotations

import math
import statistics
from typing import Any

from benchmarks.markdown import load_span, minutes, table_head, table_row, thousands
from benchmarks.systems import SYSTEM_LABELS


def _architecture(facts: dict[str, Any]) -> str:
    """Layer sizes input-hidden-latent-hidden-input, e.g. 784-400-20-400-784."""
    hidden = facts["hidden"]
    sizes = (
        facts["input_dim"],
        *hidden,
        facts["latent_dim"],
        *reversed(hidden),
        facts["input_dim"],
    )
    return "-".join(str(v) for v in sizes)


def _rows_per_s_lines(results: dict[str, Any]) -> list[str]:
    """One table per model: rows/s of each system at each batch size, x onnxruntime."""
    cfg = results["settings"]
    lines: list[str] = []
    for name, per_system in results["throughput"].items():
        batches = list(next(iter(per_system.values())))
        lines += [
            f"### Throughput, rows/s: `{name}` ({_architecture(results['models'][name])}; "
            f"median of {cfg['repeats']}; in brackets: x onnxruntime in-process)",
            "",
            *table_head(["system", *(f"batch {b}" for b in batches)]),
        ]
        ort = per_system.get("onnxruntime", {})
        for system, points in per_system.items():
            cells = []
            for b in batches:
                rate = points[b]["rows_per_s"]
                base = ort.get(b, {}).get("rows_per_s")
                rel = f" ({rate / base:.2f}x)" if base and system != "onnxruntime" else ""
                cells.append(f"{thousands(rate)}{rel}")
            lines.append(table_row([SYSTEM_LABELS[system].format(threads=cfg["threads"]), *cells]))
        other = [
            statistics.median(
                f for points in per_system.values() for f in points[b].get("other_load_cores", [])
            )
            if any(points[b].get("other_load_cores") for points in per_system.values())
            else math.nan
            for b in batches
        ]
        lines.append(
            table_row(
                [
                    "*other work on the machine meanwhile, cores (median)*",
                    *(f"*{v:.2f}*" for v in other),
                ]
            )
        )
        lines.append("")
    return lines


def _vae_client_lines(results: dict[str, Any]) -> list[str]:
    """vae-client file to file: the job's rows/s, the whole command's, start-up and memory."""
    if not any("vae_client" in s for s in results["throughput"].values()):
        return []
    lines = [
        "### `vae-client score` file to file (NPY in, CSV out)",
        "",
        *table_head(
            [
                "model",
                "batch",
                "rows",
                "job rows/s",
                "whole command rows/s",
                "start-up s",
                "peak RSS MB",
            ]
        ),
    ]
    for name, per_system in results["throughput"].items():
        for b, p in per_system.get("vae_client", {}).items():
            lines.append(
                table_row(
                    [
                        name,
                        b,
                        f"{p['rows']:,}",
                        thousands(p["rows_per_s"]),
                        thousands(p["wall_rows_per_s"]),
                        f"{p['startup_s']:.2f}",
                        p["peak_rss_mb"],
                    ]
                )
            )
    return [
        *lines,
        "",
        "Job rows/s is the client's own `--summary-json` figure (first request to last row "
        "written); the whole command adds the start-up (interpreter, imports, connect).",
        "",
    ]


def _latency_lines(results: dict[str, Any]) -> list[str]:
    """Encode latency per model and number of concurrent clients, and the bare stub's."""
    lines = [
        "### Unary Encode of one row: latency through `VaeClient.encode`",
        "",
        *table_head(
            ["model", "concurrent clients", "p50 ms", "p90 ms", "p99 ms", "mean ms", "calls/s"]
        ),
    ]
    for name, lat in results["latency"].items():
        for lv in lat["vae_client"]:
            lines.append(
                table_row(
                    [
                        name,
                        lv["concurrency"],
                        f"{lv['p50_ms']:.3f}",
                        f"{lv['p90_ms']:.3f}",
                        f"{lv['p99_ms']:.3f}",
                        f"{lv['mean_ms']:.3f}",
                        f"{lv['calls_per_s']:,.0f}",
                    ]
                )
            )
        raw = lat["raw_stub"]
        lines.append(
            f"| {name} | 1, bare generated stub | {raw['p50_ms']:.3f} | | {raw['p99_ms']:.3f} | | |"
        )
    return lines


def _notes_lines(results: dict[str, Any]) -> list[str]:
    """Peak memory, then how each system was set up, the load and the run's duration."""
    cfg, mem = results["settings"], results["memory"]
    lines = [
        "",
        f"Each client thread has its own VaeClient (own channel and TCP connection) in one "
        f"process, so they share a GIL; {cfg['latency_s']:g} s of calls per level.",
        "",
        f"Peak RSS: server {mem['server_peak_rss_mb']} MB (VmHWM; "
        f"{mem['server_rss_after_load_mb']} MB after loading both models), `vae-client score` "
        f"{mem['vae_client_peak_rss_mb']} MB (largest over all its runs), this benchmark "
        f"process {mem['benchmark_process_peak_rss_mb']} MB (holds torch, PyOD and the input "
        "rows: not a client figure).",
        "",
    ]
    details = cfg["models_detail"].values()
    ort_info = next((d["onnxruntime"] for d in details if "onnxruntime" in d), None)
    if ort_info:
        lines.append(
            f"onnxruntime: providers {ort_info['providers']}, intra-op threads "
            f"{ort_info['intra_op_num_threads']} (0: one per physical core), spinning "
            f"{ort_info['allow_spinning']}, the server's defaults. PyTorch and PyOD: "
            f"{cfg['threads']} threads. Server: `{' '.join(cfg['server_command'])}`."
        )
    pyod = next((d["pyod"] for d in details if "pyod" in d), None)
    if pyod:
        lines.append(
            f"PyOD: `VAE(encoder_neuron_list=..., dropout_rate=0.0, epoch_num="
            f"{pyod['settings']['epoch_num']}, preprocessing=True)` with our layer sizes, "
            "fitted on the data set's rows; `decision_function(X, batch_size=B)`."
        )
    lines.append(
        f"Load average {load_span(results)} (2 cores; other work on the machine skews "
        f"timings); took {minutes(results['runtime_seconds'])}."
    )
    return lines


def markdown_tables(results: dict[str, Any]) -> str:
    """Markdown tables of a `run_throughput` result: rows/s, vae-client, latency, memory."""
    lines = [
        *_rows_per_s_lines(results),
        *_vae_client_lines(results),
        *_latency_lines(results),
        *_notes_lines(results),
    ]
    return "\n".join(lines) + "\n"
