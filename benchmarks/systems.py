"""The systems the throughput benchmark scores rows with, each as a Runner: onnxruntime
in-process, the Score stream via VaeClient, vae-client file to file, torch eager and PyOD."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.client_score import launch_vae_client
from benchmarks.detectors import fit_pyod_vae
from benchmarks.measure import Runner

SYSTEMS = (
    "onnxruntime",
    "score_stream",
    "vae_client",
    "torch",
    "torch_1t",
    "pyod",
    "pyod_1t",
)
SYSTEM_LABELS = {
    "onnxruntime": "onnxruntime in-process (ceiling)",
    "score_stream": "gRPC Score stream (VaeClient.score)",
    "vae_client": "vae-client score, NPY -> CSV",
    "torch": "PyTorch eager (same weights), {threads} threads",
    "torch_1t": "PyTorch eager (same weights), 1 thread",
    "pyod": "PyOD VAE decision_function, {threads} threads",
    "pyod_1t": "PyOD VAE decision_function, 1 thread",
}


def chunks(x: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """Consecutive slices of `batch` rows (the last may be shorter)."""
    for i in range(0, len(x), batch):
        yield x[i : i + batch]


def onnxruntime_runner(model_dir: Path, repo: Path, device: str) -> tuple[Runner, dict[str, Any]]:
    """scorer.onnx in-process, with exactly the server's session options (default settings)."""
    from vaeserve.server.sessions import SessionFactory
    from vaeserve.server.settings import ServerSettings

    factory = SessionFactory(ServerSettings(model_repo=repo, device=device))  # type: ignore[arg-type]
    graph = factory.create(model_dir / "scorer.onnx", "scorer")

    def run(x: np.ndarray, batch: int) -> None:
        for chunk in chunks(x, batch):
            graph.run({"x": chunk})

    so = graph.session.get_session_options()
    info = {
        "providers": graph.providers,
        "intra_op_num_threads": so.intra_op_num_threads,
        "inter_op_num_threads": so.inter_op_num_threads,
        "allow_spinning": so.get_session_config_entry("session.intra_op.allow_spinning"),
        "graph_optimization_level": str(so.graph_optimization_level),
    }
    return run, info


def score_stream_runner(client: Any, model: str) -> Runner:
    """VaeClient.score over one Score stream per measurement."""

    def run(x: np.ndarray, batch: int) -> None:
        n = 0
        for result in client.score(chunks(x, batch), model=model):
            n += result.rows
        if n != len(x):
            raise RuntimeError(f"Score stream answered {n} of {len(x)} rows")

    return run


def vae_client_runner(target: str, model: str, workdir: Path) -> Runner:
    """`vae-client score` file to file; the input file is written before the clock starts."""

    def run(x: np.ndarray, batch: int) -> dict[str, Any]:
        src = workdir / f"in-{len(x)}x{x.shape[1]}.npy"
        if not src.exists():  # kept for the next repeat; the work folder is removed at the end
            np.save(src, x)
        out, summary_file = workdir / "out.csv", workdir / "summary.json"
        launched = launch_vae_client(
            [
                "score",
                str(src),
                "-o",
                str(out),
                "-m",
                model,
                "--server",
                target,
                "--batch-size",
                str(batch),
                "--overwrite",
                "-q",
                "--summary-json",
                str(summary_file),
            ]
        )
        if launched["rc"] != 0:
            raise RuntimeError(f"vae-client failed: {launched['stderr']}")
        summary = json.loads(summary_file.read_text())
        if summary["scored"] != len(x):
            raise RuntimeError(f"vae-client scored {summary['scored']} of {len(x)} rows")
        return {
            "rows_per_s": summary["rows_per_s"],
            "wall_s": launched["wall_s"],
            "wall_rows_per_s": len(x) / launched["wall_s"],
            "startup_s": launched["wall_s"] - summary["elapsed_s"],
            "peak_rss_kib": launched["peak_kib"],
        }

    return run


def torch_runner(run_dir: str, threads: int) -> Runner:
    """PyTorch eager on the same weights: load_model + model.score under no_grad."""
    import torch

    from vaeserve.training import load_model

    model, _ = load_model(run_dir)
    model.eval()

    def run(x: np.ndarray, batch: int) -> None:
        torch.set_num_threads(threads)  # process-wide: set on every run
        with torch.no_grad():
            for chunk in chunks(x, batch):
                model.score(torch.from_numpy(chunk))

    return run


def fit_pyod(
    hidden: Sequence[int], latent_dim: int, x_train: np.ndarray, epochs: int, threads: int
) -> tuple[Any, dict[str, Any]]:
    """PyOD's VAE with our layer sizes, fitted briefly; returns (detector, facts)."""
    import torch

    torch.set_num_threads(threads)
    settings = {
        "encoder_neuron_list": list(hidden),
        "decoder_neuron_list": list(reversed(hidden)),
        "latent_dim": latent_dim,
        "dropout_rate": 0.0,
        "epoch_num": epochs,
        "batch_size": 128,
        "preprocessing": True,
        "device": "cpu",
        "verbose": 0,
        "random_state": 0,
    }
    detector, fit_s, _ = fit_pyod_vae(settings, x_train)
    facts = {"settings": settings, "fit_rows": len(x_train), "fit_seconds": round(fit_s, 2)}
    return detector, facts


def pyod_runner(detector: Any, threads: int) -> Runner:
    """decision_function(X, batch_size=B) of a fitted PyOD detector with `threads` torch threads."""
    import torch

    def run(x: np.ndarray, batch: int) -> None:
        torch.set_num_threads(threads)
        detector.decision_function(x, batch_size=batch)

    return run
