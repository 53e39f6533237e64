"""The one benchmark command: speed and quality side by side, one results file, one report.

    python -m benchmarks.run [--quick] [--no-quality] [--no-throughput] [--workdir DIR]

Runs the throughput, latency and memory benchmark (`benchmarks.throughput`) first, while the
machine is otherwise quiet, then anomaly quality and training time (`benchmarks.quality`), and
writes benchmarks/results/results.json and BENCHMARKS.md at the repository root: the machine's
description, every table, and the issue's targets computed from this run, each met or not met.
`--quick` runs small sizes (a smoke test: its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine import load_average, machine_description
from benchmarks.markdown import minutes
from benchmarks.progress import log
from benchmarks.quality import run_quality
from benchmarks.record import write_results
from benchmarks.targets import quality_targets, speed_targets, targets_table
from benchmarks.throughput import ThroughputConfig, run_throughput
from benchmarks.throughput_report import markdown_tables as throughput_tables

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "results.json"
DEFAULT_MARKDOWN = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results"
#: Benchmarks with a command of their own (too long or too specific for every run): each writes
#: RESULTS/NAME.json and the section RESULTS/NAME.md that BENCHMARKS.md carries after this run's.
SEPARATE = (
    ("worst_request", "python -m benchmarks.worst_request --baseline REV"),
    ("fuzz", "python -m benchmarks.fuzz --cases 100000"),
    ("install_sizes", "python -m benchmarks.install_sizes"),
    ("ray_batch", "python -m benchmarks.ray_batch"),
    ("monitoring", "python -m benchmarks.monitoring"),
    ("tracing_cost", "python -m benchmarks.tracing_cost"),
)


def _machine_section(machine: dict[str, Any], loads: dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    lines = [
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['cpu_count']} logical CPUs "
        f"({machine['cpu_usable']} usable), {machine['memory_gib']} GiB memory",
        f"- {machine['platform']}, Python {machine['python']}",
        f"- packages: {packages}",
        "- load average (1, 5, 15 min): "
        + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in loads.items()),
        "",
        "Other work on this shared 2-core machine (tests, other benchmarks) skews the timings; "
        "the load averages above say how busy it was.",
        "",
    ]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """BENCHMARKS.md from a results dict."""
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks.run{' --quick' if results['quick'] else ''}` on "
        f"{results['started']} ({minutes(results['runtime_seconds'])}). Raw numbers: "
        "`benchmarks/results/results.json`.",
        "",
    ]
    if results["quick"]:
        lines += ["**Quick mode: small sizes for a smoke test; these numbers mean nothing.**", ""]
    lines.append(_machine_section(results["machine"], results["load_average"]))
    lines += [
        "## Targets (issue 6), from this run",
        "",
        targets_table(results["targets"]),
        "Throughput ratios are on `mlp784` at 1024-row batches: the median over the interleaved "
        "repeats of each repeat's ratio (the two systems ran seconds apart), then the ratio of "
        "the medians. `vae-client` counts its job rows/s (see its table for the whole command); "
        "PyOD is the faster of 1 and 2 torch threads in each repeat. Encode latency is "
        "`VaeClient.encode` of one row from one client thread.",
        "",
    ]
    if results.get("throughput"):
        lines += ["## Throughput, latency and memory", "", throughput_tables(results["throughput"])]
    lines += ["## Anomaly quality and training time", ""]
    if results.get("quality"):
        from benchmarks.quality_report import markdown_tables as quality_tables

        lines.append(quality_tables(results["quality"]))
    else:
        lines += [results.get("quality_note") or "Not run.", ""]
    lines += _separate_sections(RESULTS)
    return "\n".join(lines).rstrip() + "\n"


def _separate_sections(folder: Path) -> list[str]:
    """The sections of the benchmarks that run on their own (this command does not rerun them)."""
    lines = [
        "# Separate benchmarks",
        "",
        "Each of these has a command of its own and ran at another time than the sections above; "
        "its section says what it measured, and its JSON next to it holds the raw numbers.",
        "",
    ]
    found = False
    for name, command in SEPARATE:
        md = folder / f"{name}.md"
        if not md.exists():
            continue
        found = True
        lines += [f"<!-- {name}: `{command}` -->", md.read_text().strip(), ""]
    return lines if found else []


def run(
    quick: bool = False,
    throughput: bool = True,
    quality: bool = True,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Run the benchmarks and return the combined results dict."""
    started = time.perf_counter()
    out: dict[str, Any] = {
        "benchmark": "vaeserve",
        "quick": quick,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "load_average": {"start": load_average()},
        "throughput": None,
        "quality": None,
        "quality_note": None,
        "targets": [],
    }
    if throughput:
        log("== throughput, latency and memory")
        config = ThroughputConfig.quick() if quick else ThroughputConfig()
        tp_dir = None if workdir is None else workdir / "throughput"
        out["throughput"] = run_throughput(config, tp_dir)
        out["targets"] += speed_targets(out["throughput"])
        out["load_average"]["after_throughput"] = load_average()
    if quality:
        log("== anomaly quality and training time")
        q_dir = None if workdir is None else workdir / "quality"
        if quick:
            out["quality"] = run_quality(seeds=(0,), digits=(0,), epochs=10, workdir=q_dir)
        else:
            out["quality"] = run_quality(workdir=q_dir)
        out["targets"] += quality_targets(out["quality"])
        out["load_average"]["after_quality"] = load_average()
    out["load_average"]["end"] = load_average()
    out["runtime_seconds"] = round(time.perf_counter() - started, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run everything, write results.json and BENCHMARKS.md, print the targets."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--no-throughput", action="store_true", help="skip speed and latency")
    parser.add_argument("--no-quality", action="store_true", help="skip quality and training")
    parser.add_argument("--workdir", type=Path, help="keep trained models and files here")
    parser.add_argument("--output", type=Path, default=DEFAULT_JSON, help="results JSON")
    parser.add_argument("--markdown", type=Path, default=DEFAULT_MARKDOWN, help="report")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the report from the results JSON and the separate sections; run nothing",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        args.markdown.write_text(render(json.loads(args.output.read_text())))
        log(f"wrote {args.markdown} from {args.output}")
        return 0
    results = run(
        quick=args.quick,
        throughput=not args.no_throughput,
        quality=not args.no_quality,
        workdir=args.workdir,
    )
    write_results(args.output, results)
    args.markdown.write_text(render(results))
    print(targets_table(results["targets"]))
    log(f"wrote {args.output} and {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
