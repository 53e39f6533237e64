"""The markdown section of the batch-scoring benchmark (benchmarks.ray_batch): each system's
rows/s next to onnxruntime alone and the local engine, the job's own figures, peak RSS, and
what the measured per-worker rate says about more workers."""

from __future__ import annotations

from typing import Any

from benchmarks.markdown import load_span, table_head, table_row, thousands


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _mb(value: float | None) -> str:
    return f"{value:,.0f} MB" if value else "-"


def markdown_report(results: dict[str, Any]) -> str:
    """The section as markdown."""
    systems = results["systems"]
    data = results["dataset"]
    base = systems.get("onnxruntime", {}).get("rows_per_s")
    local = systems.get("local_in_process", {}).get("rows_per_s")
    quick = results["settings"]["quick"]
    command = "python -m benchmarks.ray_batch" + (" --quick" if quick else "")
    minutes = results["runtime_seconds"] / 60
    lines = [
        "## Batch scoring of a dataset: Ray engine, local engine, onnxruntime",
        "",
        f"Written by `{command}` ({minutes:.1f} min; load average {load_span(results)}). "
        f"{data['rows']:,} rows x {data['features']} float32 features in {data['files']} Parquet "
        f"files ({data['bytes'] / 1e9:.2f} GB, row groups of {data['row_group']:,}), model "
        f"`{results['model']['name']}`, batches of {results['settings']['batch_size']} rows, "
        "each system once over the whole dataset, one after the other on the same machine. "
        "rows/s is the rows over the command's wall time, start-up included; the job's rows/s "
        "leaves out what precedes the job (imports; for Ray, not its start, which is inside the "
        "job); a worker's rows/s is its rows over the seconds it was busy scoring parts.",
        "",
    ]
    if quick:
        lines += ["**Quick mode: tiny sizes for a smoke run; these numbers mean nothing.**", ""]
    lines += table_head(
        [
            "system",
            "what",
            "rows/s",
            "vs onnxruntime",
            "vs local engine",
            "job rows/s",
            "per worker rows/s",
            "driver peak RSS",
            "worker peak RSS",
        ]
    )
    for name, r in systems.items():
        if "error" in r:
            lines.append(table_row([f"`{name}`", r.get("what", ""), "failed", *["-"] * 6]))
            continue
        lines.append(
            table_row(
                [
                    f"`{name}`",
                    r["what"],
                    thousands(r["rows_per_s"]),
                    _ratio(r["rows_per_s"], base),
                    _ratio(r["rows_per_s"], local),
                    thousands(r["job_rows_per_s"]),
                    thousands(r["worker_rows_per_s"]) if "worker_rows_per_s" in r else "-",
                    _mb(r.get("driver_peak_rss_mb")),
                    _mb(r.get("worker_peak_rss_mb")),
                ]
            )
        )
    lines += ["", *_scaling(results), ""]
    return "\n".join(lines)


def _scaling(results: dict[str, Any]) -> list[str]:
    """What the single-worker Ray run's per-worker rate says about N workers."""
    systems = results["systems"]
    one = systems.get("ray_in_process_1", {})
    wide = systems.get("ray_in_process", {})
    served = systems.get("ray_server", {})
    if "worker_rows_per_s" not in one:
        return []
    r1 = one["worker_rows_per_s"]
    n = results["settings"]["workers"]
    rows = results["dataset"]["rows"]
    fixed = one["wall_s"] - one["worker_busy_s"]
    lines = [
        f"One Ray worker (1 CPU, one onnxruntime thread) scored {thousands(r1)} rows/s while "
        f"busy; the run took {one['wall_s']:.0f} s of which {one['worker_busy_s']:.0f} s were "
        f"scoring, so Ray's start, scheduling and the driver cost about {fixed:.0f} s per job "
        "here. Scoring is per part and workers share nothing but the input storage (and, in "
        "server mode, the replicas), so N such workers on N free CPUs give about "
        f"N x {thousands(r1)} rows/s: {thousands(8 * r1)} rows/s for 8, {thousands(64 * r1)} "
        f"for 64, until storage or the replicas become the limit; the job then takes about "
        f"{fixed:.0f} s + {rows:,} / (N x {thousands(r1)}) s.",
    ]
    if "worker_rows_per_s" in wide:
        lines += [
            "",
            f"With {n} workers on this {results['machine']['cpu_usable']}-core machine each "
            f"worker ran at {thousands(wide['worker_rows_per_s'])} rows/s: they share the cores "
            "with the driver and Ray's own processes (and other work on the machine), so it "
            "cannot show scaling.",
        ]
    if "worker_rows_per_s" in served:
        lines += [
            "",
            f"Through vae-server each worker ran at {thousands(served['worker_rows_per_s'])} "
            "rows/s, the server on the same cores; on a cluster that rate is bounded by the "
            "replicas behind `dns:///`, so add replicas with workers.",
        ]
    return lines
