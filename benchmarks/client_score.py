"""End-to-end `vae-client score` throughput and peak RSS next to onnxruntime in-process.

    python benchmarks/client_score.py --server 127.0.0.1:50051 --model-dir REPO/NAME/VERSION \
        --input big.npy [--rows 1000000] [--output out.csv]

When --input does not exist it is generated first: --rows rows drawn from the model itself
(VaeClient.sample in slices, so the data look like what the model was trained on). The client
runs under a small launcher so its peak RSS is its own; onnxruntime then scores the same file in
this process in batches of --batch-size, reading the .npy slice by slice. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

LAUNCHER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(json.dumps({'rc': proc.returncode, 'wall_s': time.perf_counter() - t,\n"
    "    'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,\n"
    "    'stderr': proc.stderr[-1000:]}))\n"
)


def launch_vae_client(args: list[str]) -> dict[str, Any]:
    """`vae-client ARGS` under LAUNCHER: its rc, wall_s, peak_kib (its own) and stderr's tail."""
    command = [str(Path(sys.executable).parent / "vae-client"), *args]
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def generate(path: Path, rows: int, server: str, model: str) -> None:
    """Write `rows` rows sampled from the model, 50k at a time."""
    from vaeserve.client import VaeClient

    with VaeClient(server) as client:
        info = client.model_info(model)
        out = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float32, shape=(rows, info.input_dim)
        )
        for k, start in enumerate(range(0, rows, 50_000)):
            n = min(50_000, rows - start)
            out[start : start + n] = client.sample(n, model=model, seed=k).rows
        out.flush()


def onnxruntime_rows_per_s(model_dir: Path, path: Path, batch_size: int) -> float:
    """Fused scorer over the file in-process (CPU, thread spinning off), rows/s."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(model_dir / "scorer.onnx"), options, providers=["CPUExecutionProvider"]
    )
    data = np.load(path, mmap_mode="r")
    start = time.perf_counter()
    for i in range(0, len(data), batch_size):
        session.run(None, {"x": np.ascontiguousarray(data[i : i + batch_size])})
    return len(data) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--model-dir", type=Path, required=True, help="REPO/NAME/VERSION")
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--output", default=None, help="default: INPUT stem + .scores.csv")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    model = f"{manifest['name']}:{manifest['version']}"
    if not args.input.exists():
        generate(args.input, args.rows, args.server, model)
    output = args.output or str(args.input.with_suffix(".scores.csv"))
    run = launch_vae_client(
        [
            "score",
            str(args.input),
            "-o",
            output,
            "-m",
            model,
            "--server",
            args.server,
            "--overwrite",
            "-q",
            "--batch-size",
            str(args.batch_size),
        ]
    )
    if run["rc"] != 0:
        raise SystemExit(f"vae-client failed: {run['stderr']}")
    rows = int(np.load(args.input, mmap_mode="r").shape[0])
    client_rate = rows / run["wall_s"]
    ort_rate = onnxruntime_rows_per_s(args.model_dir, args.input, args.batch_size)
    print(
        json.dumps(
            {
                "rows": rows,
                "features": manifest["input_dim"],
                "file_gb": round(args.input.stat().st_size / 1e9, 2),
                "client_rows_per_s": round(client_rate),
                "onnxruntime_in_process_rows_per_s": round(ort_rate),
                "ratio": round(client_rate / ort_rate, 3),
                "client_peak_rss_mb": round(run["peak_kib"] / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
