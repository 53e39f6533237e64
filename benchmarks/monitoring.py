"""Explanations and drift monitoring: how well they work and what they cost the server, in one
run.

- Figures (`export/monitoring_figures.py`, the set-ups the tests use): the explanation's
  top-1 hit rate on corrupted breast-cancer rows, the drift test's false-alarm rate at
  alpha = 0.01 and its power, on rows the models never saw.
- Cost: Score stream rows/s and server CPU per message on four `vae-server` subprocesses on
  one repository (TrainConfig's default 64-256-128-8 VAE on builtin:digits, one epoch: speed
  does not depend on the fit):
  - `before`: the server of `--baseline` (the commit before explanations and the drift
    window reached the server, benchmarks/revisions.py);
  - `off`: this checkout with the drift window off (`--drift-window-rows 0`), no explain;
  - `drift`: the default window (1024 rows) evaluated every second (`--drift-period-s 1`,
    the default is 10), no explain;
  - `explain`: the `off` server again, every message asking for its rows' top 3 features.
  Runs are interleaved with the order rotated each repeat; each point is the median of
  `--repeats` (benchmarks/tracing_cost.py's method: read the ratios, the machine's other work
  shifts all servers alike).

    python -m benchmarks.monitoring [--quick] [--skip-figures] [--baseline REV] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_description
from benchmarks.record import results_record, write_results
from benchmarks.revisions import unpack_revision
from benchmarks.server_process import ServerProcess
from benchmarks.tracing_cost import ratios, run_stream
from benchmarks.worst_request import Client, prepare, score_message, tile

RESULTS = Path(__file__).parent / "results"
DEFAULT_BASELINE = "f8d3415"  # the tracing merge, before the monitor branch
CONFIGS = ("before", "off", "drift", "explain")
PAIRS = (("off", "before"), ("drift", "off"), ("explain", "off"))
EXPLAIN_K = 3


def start_servers(repo: Path, work: Path, baseline: str) -> dict[str, ServerProcess]:
    """The servers the configurations run on (`explain` shares the `off` one)."""
    servers: dict[str, ServerProcess] = {}
    try:
        if baseline:
            src = unpack_revision(baseline, work / "baseline")
            servers["before"] = ServerProcess(repo, pythonpath=src, log_file=work / "before.log")
        servers["off"] = ServerProcess(repo, "--drift-window-rows", "0", log_file=work / "off.log")
        servers["drift"] = ServerProcess(repo, "--drift-period-s", "1", log_file=work / "drift.log")
    except BaseException:
        for s in servers.values():
            s.stop()
        raise
    servers["explain"] = servers["off"]
    return servers


def measure_cost(
    servers: dict[str, ServerProcess], x: Any, sizes: dict[int, int], repeats: int
) -> dict[str, Any]:
    """rows/s and server CPU µs per message per configuration and batch size."""
    names = list(servers)
    messages = {
        (name, b): [
            score_message(
                "digits", tile(x, b), batch_id=str(i), explain=EXPLAIN_K * (name == "explain")
            )
            for i in range(n)
        ]
        for name in names
        for b, n in sizes.items()
    }
    clients = {name: Client(s.target) for name, s in servers.items()}
    runs = {b: {c: [] for c in names} for b in sizes}
    cpu = {b: {c: [] for c in names} for b in sizes}
    try:
        for name in names:  # warm up each configuration at each size
            for b in sizes:
                run_stream(clients[name], messages[name, b][:8])
        if "explain" in names:
            check_explained(clients["explain"], messages["explain", min(sizes)][0])
        for i in range(repeats):
            for b in sizes:
                order = names[i % len(names) :] + names[: i % len(names)]
                for name in order:
                    pid = servers[name].proc.pid
                    rate, cpu_us = run_stream(clients[name], messages[name, b], pid)
                    runs[b][name].append(rate)
                    cpu[b][name].append(cpu_us)
            print(f"repeat {i + 1}/{repeats} done", file=sys.stderr, flush=True)
    finally:
        for c in clients.values():
            c.close()
    out: dict[str, Any] = {}
    for b, per in runs.items():
        point: dict[str, Any] = {
            name: {
                "rows_per_s_median": round(statistics.median(r)),
                "runs": [round(v) for v in r],
                "server_cpu_us_per_message_median": round(statistics.median(cpu[b][name]), 1),
            }
            for name, r in per.items()
        }
        point["ratios"] = ratios(per, PAIRS)
        point["cpu_ratios"] = ratios(cpu[b], PAIRS)
        point["messages_per_run"] = sizes[b]
        out[str(b)] = point
    return out


def check_explained(client: Client, message: Any) -> None:
    """Raise unless the server answers `message` with its rows' top features."""
    (answer,) = client.score([message])
    rows, k = answer.explain_index.shape if len(answer.explain_index.shape) == 2 else (0, 0)
    if (rows, k) != (message.rows.shape[0], message.explain):
        raise RuntimeError(f"asked for {message.explain} features, got [{rows}, {k}]")


def run_cost(baseline: str, repeats: int, sizes: dict[int, int]) -> dict[str, Any]:
    """Train and export the model, start the servers, measure, stop them."""
    with tempfile.TemporaryDirectory(prefix="vae-monitoring-") as tmp:
        work = Path(tmp)
        repo, rows = prepare(work, ["digits"])
        servers = start_servers(repo, work, baseline)
        try:
            return measure_cost(servers, rows["digits"], sizes, repeats)
        finally:
            for s in set(servers.values()):
                s.stop()


def figures(quick: bool) -> dict[str, Any]:
    """The explain and drift quality figures (export/monitoring_figures.py)."""
    from vaeserve.export.monitoring_figures import measure_monitoring

    with tempfile.TemporaryDirectory(prefix="vae-monitoring-fig-") as tmp:
        return measure_monitoring(tmp, quick=quick)


def markdown(results: dict[str, Any]) -> str:
    """The results as a short report."""
    lines = ["# Explanations and drift: how well they work, what they cost", ""]
    fig = results.get("figures")
    if fig:
        lines += _figures_markdown(fig, results["quick"])
    cost = results.get("cost")
    if cost:
        lines += _cost_markdown(cost, results)
    return "\n".join(lines).rstrip() + "\n"


def _figures_markdown(fig: dict[str, Any], quick: bool) -> list[str]:
    lines = [
        "Explanations: breast-cancer one-class model (benign normal); each held-out benign "
        "row has one feature shifted by k training standard deviations; the top-1 feature "
        "should be that one (docs/monitoring.md has the protocol)."
        + (" Quick run: fewer windows and trials." if quick else ""),
        "",
        "| shift | flagged | top-1 right, flagged rows | top-1 right, all rows |",
        "|---|---|---|---|",
    ]
    for key, r in fig["explain"].items():
        if key.endswith("raw_ranking"):
            continue
        rate = f"{r['hits']} / {r['flagged']}" + (f" ({r['rate']:.3f})" if r["flagged"] else "")
        lines.append(f"| {r['shift_sd']:g} sd | {r['flagged']} | {rate} | {r['rate_all']:.3f} |")
    raw = fig["explain"].get("shift_3sd_raw_ranking")
    if raw:
        lines += ["", f"Ranked by raw NLL instead of excess, 3 sd: {raw['rate_all']:.3f} of rows."]
    lines += [
        "",
        "Drift false alarms at alpha = 0.01: windows of held-out rows against the exported "
        "reference, and over references (each trial fits its own reference and null to "
        "held-out rows, as an export does):",
        "",
        "| model | reference rows | null | W | exported reference | over references |",
        "|---|---|---|---|---|---|",
    ]
    for key, entry in fig["drift"].items():
        for a, b in zip(entry["exported_reference"], entry["over_references"], strict=True):
            lines.append(
                f"| {key} | {entry['reference_rows']} | {entry['null_method']} | {a['window']} "
                f"| {a['rate']:.3f} ({a['windows']}) | {b['rate']:.3f} ({b['windows']}) |"
            )
    lines += ["", "Detection (p < 0.01) of shifted windows:", ""]
    lines += ["| model | W | shift | detected |", "|---|---|---|---|"]
    for key, entry in fig["drift"].items():
        for d in entry.get("detection_digit1_mixed_in", []):
            lines.append(f"| {key} | {d['window']} | {d['fraction']:.0%} ones | {d['rate']:.3f} |")
        for d in entry.get("detection_class_share", []):
            lines.append(
                f"| {key} | {d['window']} | {d['fraction']:.0%} {d['digit']}s | {d['rate']:.3f} |"
            )
    lines += [""]
    return lines


def _cost_markdown(cost: dict[str, Any], results: dict[str, Any]) -> list[str]:
    sizes = [k for k in cost if k.isdigit()]
    machine = results["machine"]
    lines = [
        "Cost: one Score stream of "
        + ", ".join(f"{cost[b]['messages_per_run']} messages of {b} rows" for b in sizes)
        + f" per run, {results['repeats']} interleaved repeats, median rows/s "
        f"({machine.get('cpu_model', '')}, {machine.get('cpu_usable', '')} cores shared by "
        f"client and servers). `before`: commit {results['baseline']}; `off`: drift window "
        "off, no explain; `drift`: 1024-row window evaluated every second; `explain`: "
        f"top {EXPLAIN_K} features asked for in every message.",
        "",
        "| rows per message | before | off | drift | explain | off / before | drift / off "
        "| explain / off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (("ratios", "rows/s"), ("cpu_ratios", "cpu")):
        if label == "cpu":
            lines += [
                "",
                "Server CPU per message (µs, median; from a run's start to 1 s after its last "
                "answer):",
                "",
                "| rows per message | before | off | drift | explain | off / before "
                "| drift / off | explain / off |",
                "|---|---|---|---|---|---|---|---|",
            ]
        field = "rows_per_s_median" if label == "rows/s" else "server_cpu_us_per_message_median"
        for b in sizes:
            p = cost[b]
            cells = [b] + [f"{p[c][field]:,}" if c in p else "-" for c in CONFIGS]
            for a, base in PAIRS:
                r = p[key].get(f"{a}/{base}")
                cells.append(f"{r['median_ratio']} ({r['min']}-{r['max']})" if r else "-")
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "Ratios: of the medians, with the range of the same-repeat ratios in brackets (a range "
        "that spans 1.0 is a difference this run could not resolve).",
        "",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows, trials, messages")
    parser.add_argument("--skip-figures", action="store_true", help="only the cost")
    parser.add_argument("--skip-cost", action="store_true", help="only the figures")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="'' to skip `before`")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS / "monitoring.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    body: dict[str, Any] = {
        "quick": args.quick,
        "baseline": args.baseline,
        "repeats": args.repeats,
    }
    if not args.skip_figures:
        body["figures"] = figures(args.quick)
    if not args.skip_cost:
        sizes = {1024: 20, 64: 200} if args.quick else {1024: 150, 64: 1500}
        body["cost"] = run_cost(args.baseline, args.repeats, sizes)
    results = results_record(
        "monitoring", machine_description(), body, round(time.perf_counter() - started, 1)
    )
    write_results(args.output, results)
    md = markdown(results)
    args.output.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
