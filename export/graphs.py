"""The five ONNX graphs of a model: torch wrappers and their export with a dynamic batch."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vaeserve.training.model import VAE


class EncoderGraph(nn.Module):
    """x[, cond] -> mu, logvar."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        return self.vae.encode(x, cond)


class DecoderGraph(nn.Module):
    """z[, cond] -> x_hat in raw feature units."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None):
        return self.vae.decode(z, cond)


class ScorerGraph(nn.Module):
    """x[, cond] -> kl, kl_per_dim, recon_nll, neg_elbo (deterministic, z = mu), then the
    posterior mu and logvar they came from (for drift monitoring)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        return self.vae.score_with_posterior(x, cond)


class ExplainerGraph(nn.Module):
    """x[, cond] -> recon_nll_per_feature, x_hat (z = mu): why a row scores as it does."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None):
        return self.vae.explain(x, cond)


class IWScorerGraph(nn.Module):
    """x, noise [K, batch, L][, cond] -> importance-weighted NLL estimate."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, noise: torch.Tensor, cond: torch.Tensor | None = None):
        return self.vae.iw_nll(x, noise, cond)


@dataclass
class GraphDef:
    """What one graph is called, its wrapper, and its inputs and outputs with their shapes
    (ints, or the dynamic axes "batch" and "K")."""

    name: str
    module: type[nn.Module]
    inputs: list[tuple[str, list[int | str]]]
    outputs: list[tuple[str, list[int | str]]]


def graph_defs(vae: VAE) -> list[GraphDef]:
    """Every graph an export writes, with its inputs and outputs (the model-format table)."""
    d, lat, c = vae.input_dim, vae.latent_dim, vae.cond_dim
    cond = [("cond", ["batch", c])] if c else []
    return [
        GraphDef(
            "encoder",
            EncoderGraph,
            [("x", ["batch", d]), *cond],
            [("mu", ["batch", lat]), ("logvar", ["batch", lat])],
        ),
        GraphDef(
            "decoder", DecoderGraph, [("z", ["batch", lat]), *cond], [("x_hat", ["batch", d])]
        ),
        GraphDef(
            "scorer",
            ScorerGraph,
            [("x", ["batch", d]), *cond],
            [
                ("kl", ["batch"]),
                ("kl_per_dim", ["batch", lat]),
                ("recon_nll", ["batch"]),
                ("neg_elbo", ["batch"]),
                ("mu", ["batch", lat]),
                ("logvar", ["batch", lat]),
            ],
        ),
        GraphDef(
            "iw_scorer",
            IWScorerGraph,
            [("x", ["batch", d]), ("noise", ["K", "batch", lat]), *cond],
            [("iw_nll", ["batch"])],
        ),
        GraphDef(
            "explainer",
            ExplainerGraph,
            [("x", ["batch", d]), *cond],
            [("recon_nll_per_feature", ["batch", d]), ("x_hat", ["batch", d])],
        ),
    ]


def example_inputs(g: GraphDef, vae: VAE) -> dict[str, torch.Tensor]:
    """Inputs of distinct, non-trivial sizes so no axis is specialised at export."""
    sizes = {"batch": 3, "K": 5}
    out = {}
    for name, shape in g.inputs:
        dims = [sizes[s] if isinstance(s, str) else s for s in shape]
        t = torch.randn(*dims)
        if name == "x":
            t = vae.mean + vae.scale * t
            if vae.likelihood == "bernoulli":
                t = torch.rand(*dims)
        out[name] = t
    return out


def export_graph(g: GraphDef, vae: VAE, path: Path, opset: int) -> None:
    """torch.onnx.export (dynamo) of one graph into a single self-contained file."""
    module = g.module(vae).eval()  # a wrapper is in training mode until told otherwise
    inputs = example_inputs(g, vae)
    dims = {"batch": torch.export.Dim("batch", min=1), "K": torch.export.Dim("K", min=1)}
    dynamic_shapes = {
        name: {i: dims[s] for i, s in enumerate(shape) if isinstance(s, str)}
        for name, shape in g.inputs
    }
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter logs optional-dependency notes as warnings
    with (
        torch.no_grad(),
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (),
            str(path),
            kwargs=inputs,
            input_names=[n for n, _ in g.inputs],
            output_names=[n for n, _ in g.outputs],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    quiet.setLevel(level)
