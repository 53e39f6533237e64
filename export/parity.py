"""Parity of the exported graphs: onnxruntime (CPU provider) against PyTorch on the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vaeserve.export.graphs import GraphDef, graph_defs
from vaeserve.training.model import VAE


class ParityError(RuntimeError):
    """An exported graph disagrees with PyTorch beyond the tolerance."""


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Normwise relative error: max|got - want| / max(max|want|, 1e-6)."""
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-6))


def _inputs_for(
    g: GraphDef, vae: VAE, x: np.ndarray, cond: np.ndarray | None, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n = len(x)
    feeds: dict[str, np.ndarray] = {}
    for name, _ in g.inputs:
        if name == "x":
            feeds[name] = x
        elif name == "cond":
            feeds[name] = cond
        elif name == "z":
            feeds[name] = rng.standard_normal((n, vae.latent_dim)).astype(np.float32)
        elif name == "noise":
            feeds[name] = rng.standard_normal((4, n, vae.latent_dim)).astype(np.float32)
    return feeds


def check_parity(
    model_dir: Path,
    vae: VAE,
    rows: dict[str, np.ndarray],
    cond: dict[str, np.ndarray | None],
    tolerance: float = 1e-4,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Run each graph in model_dir on every row set with onnxruntime and with torch; return
    {graph: {"<rows>/<output>": relative error}}, raising ParityError above tolerance."""
    rng = np.random.default_rng(seed)
    report: dict[str, dict[str, float]] = {}
    failures = []
    for g in graph_defs(vae):
        session = ort.InferenceSession(
            str(model_dir / f"{g.name}.onnx"), providers=["CPUExecutionProvider"]
        )
        module = g.module(vae).eval()
        report[g.name] = {}
        for set_name, x in rows.items():
            feeds = _inputs_for(g, vae, x, cond[set_name], rng)
            got = session.run([n for n, _ in g.outputs], feeds)
            with torch.no_grad():
                want = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            want = want if isinstance(want, tuple) else (want,)
            for (out_name, _), a, b in zip(g.outputs, got, want, strict=False):
                err = relative_error(a, b.numpy())
                report[g.name][f"{set_name}/{out_name}"] = err
                if not err <= tolerance:
                    failures.append(f"{g.name}.{out_name} on {set_name} rows: {err:.3g}")
    if failures:
        raise ParityError(
            f"onnxruntime disagrees with PyTorch above relative tolerance {tolerance:g}: "
            + "; ".join(failures)
        )
    return report
