"""Batch scoring of a multi-file Parquet dataset, side by side in one run: `vae-client score
--engine ray` with the model in-process and through vae-server, next to the local engine (the
same two ways) and to onnxruntime alone in one process, on the same files.

    python -m benchmarks.ray_batch [--rows 1048576] [--files 8] [--workers 2] [--quick]
                                   [--workdir benchmarks/work/ray_batch]

The dataset (1,048,576 rows x 784 features by default: builtin:digits784 repeated, 8 Parquet
files of 16,384-row groups) and the `mlp784` model (784-400-20-400-784, as in
benchmarks.throughput) are made in the work folder (git-ignored) and reused by later runs.
Each system scores the whole dataset once, one after the other; its rows/s is the dataset's
rows over the command's wall time, start-up included (Ray's start is part of what it costs).
The job's own figures come from its `--summary-json`: its elapsed time, each worker's busy
seconds, rows/s and peak RSS, and the driver's peak RSS. Writes
benchmarks/results/ray_batch.json and benchmarks/results/ray_batch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.client_score import launch_vae_client
from benchmarks.machine import machine_description
from benchmarks.parquet_dataset import write_dataset
from benchmarks.prepare import export_timed, train_model
from benchmarks.progress import log
from benchmarks.ray_batch_report import markdown_report
from benchmarks.record import results_record, write_results
from benchmarks.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_WORKDIR = ROOT / "benchmarks" / "work" / "ray_batch"


@dataclass(frozen=True)
class RayBatchConfig:
    """Sizes of one run."""

    rows: int = 1 << 20
    files: int = 8
    row_group: int = 16384
    workers: int = 2
    batch_size: int = 1024
    epochs: int = 5
    quick: bool = False

    @classmethod
    def quick_config(cls) -> RayBatchConfig:
        """Tiny sizes for a smoke run (its numbers mean nothing)."""
        return cls(rows=4096, files=2, row_group=1024, epochs=1, quick=True)


# (name, what it is, vae-client arguments after the input and output; None: onnxruntime)
def systems(config: RayBatchConfig) -> list[tuple[str, str, list[str] | None]]:
    """The systems in the order they run."""
    w = str(config.workers)
    ray = ["--engine", "ray", "--ray-address", "local", "--cpus-per-worker", "1"]
    one = [*ray, "--workers", "1"]
    many = [*ray, "--workers", w]
    every = [
        ("onnxruntime", "Parquet -> scorer.onnx -> Parquet, one process, every core", None),
        ("local_in_process", "vae-client score DIR --model-dir (local engine)", ["@model"]),
        ("local_server", "vae-client score DIR --server (local engine)", ["@server"]),
        ("ray_in_process_1", "--engine ray --model-dir, 1 worker", [*one, "@model"]),
        ("ray_in_process", f"--engine ray --model-dir, {w} workers", [*many, "@model"]),
        ("ray_server", f"--engine ray --server, {w} workers", [*many, "@server"]),
    ]
    # a smoke run starts Ray twice, not three times: each start costs more than its scoring
    return [s for s in every if not (config.quick and s[0] == "ray_in_process")]


def prepare_model(workdir: Path, epochs: int) -> Path:
    """mlp784 trained and exported into WORKDIR/repo (reused when already there)."""
    model_dir = workdir / "repo" / "mlp784" / "1"
    if (model_dir / "manifest.json").exists():
        return model_dir
    from vaeserve.training import TrainConfig

    result, facts = train_model(
        TrainConfig(
            data="builtin:digits784",
            run_dir=str(workdir / "runs" / "mlp784"),
            hidden=[400],
            latent_dim=20,
            epochs=epochs,
            patience=0,
            progress=False,
        )
    )
    exported, _ = export_timed(result.run_dir, workdir / "repo", "mlp784")
    log(f"trained and exported mlp784 ({facts['train_seconds']:.1f} s)")
    return exported.model_dir


def run_onnxruntime(model_dir: Path, data: Path, out: Path, batch_size: int) -> dict[str, Any]:
    """The one-process baseline in its own process (benchmarks.parquet_onnxruntime)."""
    command = [sys.executable, "-m", "benchmarks.parquet_onnxruntime", str(model_dir), str(data)]
    command += [str(out), "--batch-size", str(batch_size)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "wall_s": round(wall, 2),
        "rows_per_s": round(result["rows"] / wall),
        "job_rows_per_s": result["rows_per_s"],
        "driver_peak_rss_mb": result["peak_rss_mb"],
        "rows": result["rows"],
    }


def run_vae_client(args: list[str], data: Path, out: Path, work: Path) -> dict[str, Any]:
    """`vae-client score DATA -o OUT ARGS`: wall rate and the job's summary figures."""
    summary_file = work / f"{out.name}.summary.json"
    command = ["score", str(data), "-o", str(out), "-q", "--summary-json", str(summary_file)]
    run = launch_vae_client([*command, *args])
    if run["rc"] != 0:
        return {"error": run["stderr"][-600:]}
    summary = json.loads(summary_file.read_text())
    workers = summary["workers"]
    return {
        "wall_s": round(run["wall_s"], 2),
        "rows_per_s": round(summary["rows"] / run["wall_s"]),
        "rows": summary["rows"],
        "job_elapsed_s": round(summary["elapsed_s"], 2),
        "job_rows_per_s": round(summary["rows_per_s"]),
        "driver_peak_rss_mb": summary["driver_peak_rss_mb"],
        "worker_peak_rss_mb": max((w.get("peak_rss_mb") or 0 for w in workers), default=None),
        "workers": workers,
        "worker_rows_per_s": round(sum(w["rows_per_s"] for w in workers) / len(workers)),
        "worker_busy_s": max(w["busy_s"] for w in workers),
    }


def run_ray_batch(config: RayBatchConfig, workdir: Path) -> dict[str, Any]:
    """Prepare the model and the dataset, run every system once; the results dict."""
    started = time.perf_counter()
    machine = machine_description()
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(workdir, config.epochs)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    data = workdir / ("data-quick" if config.quick else "data")
    dataset = write_dataset(
        data,
        data="builtin:digits784",
        feature_names=manifest["feature_names"],
        rows=config.rows,
        files=config.files,
        row_group=config.row_group,
    )
    log(f"dataset: {dataset['rows']:,} rows x {dataset['features']} in {dataset['files']} files")
    os.environ.pop("RAY_ADDRESS", None)  # each Ray run starts its own local Ray
    server = ServerProcess(workdir / "repo", device="cpu", log_file=workdir / "server.log")
    results: dict[str, Any] = {}
    try:
        for name, what, args in systems(config):
            out = workdir / "out" / name
            shutil.rmtree(out, ignore_errors=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            log(f"{name}: {what}")
            if args is None:
                record = run_onnxruntime(model_dir, data, out, config.batch_size)
            else:
                model = {"@model": ["--model-dir", str(model_dir)]}
                model["@server"] = ["--server", server.target, "-m", "mlp784"]
                filled = [a for arg in args for a in model.get(arg, [arg])]
                filled += ["--batch-size", str(config.batch_size)]
                record = run_vae_client(filled, data, out, workdir)
            record["what"] = what
            results[name] = record
            log(f"  {json.dumps({k: v for k, v in record.items() if k != 'workers'})}")
            shutil.rmtree(out, ignore_errors=True)
    finally:
        server_peak = server.peak_rss_kib()
        server.stop()
    body = {
        "settings": asdict(config),
        "dataset": dataset,
        "model": {"name": "mlp784", "input_dim": manifest["input_dim"], "hidden": [400]},
        "systems": results,
        "server_peak_rss_mb": round(server_peak / 1024, 1) if server_peak else None,
    }
    return results_record("ray_batch", machine, body, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=RayBatchConfig.rows)
    parser.add_argument("--files", type=int, default=RayBatchConfig.files)
    parser.add_argument("--workers", type=int, default=RayBatchConfig.workers)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--output", type=Path, default=RESULTS / "ray_batch.json")
    args = parser.parse_args()
    if args.quick:
        config = RayBatchConfig.quick_config()
    else:
        config = RayBatchConfig(rows=args.rows, files=args.files, workers=args.workers)
    results = run_ray_batch(config, args.workdir)
    write_results(args.output, results)
    args.output.with_suffix(".md").write_text(markdown_report(results))
    print(markdown_report(results))


if __name__ == "__main__":
    main()
