"""KServe v2 inference models: each loaded model NAME is NAME (the scorer), NAME.encoder and
NAME.decoder, with the inputs and outputs ModelMetadata lists for them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vaeserve.proto.inference import grpc_service_pb2 as pb
from vaeserve.server.dataplane import DataPlane
from vaeserve.server.errors import RequestError, echo
from vaeserve.server.repository import LoadedModel

GRAPH_SUFFIXES = ("scorer", "encoder", "decoder")
MAX_VERSION_DIGITS = 18  # any int64 version fits; str.isdigit would also take "²" or "١"
_VERSION = re.compile(rf"[0-9]{{1,{MAX_VERSION_DIGITS}}}")


def parse_version(text: str) -> int:
    """model_version "" -> 0 (newest), "3" -> 3; anything but ASCII digits (at most
    MAX_VERSION_DIGITS of them) is INVALID_ARGUMENT."""
    if not text:
        return 0
    if not _VERSION.fullmatch(text):
        raise RequestError.invalid(
            f"model_version {echo(text)} is not a version number: send ASCII digits 0-9 "
            f'(at most {MAX_VERSION_DIGITS}), e.g. "1", or "" for the newest version'
        )
    return int(text)


@dataclass
class TensorSpec:
    """One input or output: name, datatype and per-row shape (the batch axis is left out)."""

    name: str
    datatype: str
    row_shape: tuple[int, ...]

    def metadata(self) -> pb.ModelMetadataResponse.TensorMetadata:
        """As ModelMetadata lists it, with -1 for the batch axis."""
        return pb.ModelMetadataResponse.TensorMetadata(
            name=self.name, datatype=self.datatype, shape=[-1, *self.row_shape]
        )


@dataclass
class Target:
    """An inference model: one graph of one loaded model version."""

    name: str  # the KServe model name: NAME or NAME.encoder / NAME.decoder
    model: LoadedModel
    graph: str  # scorer, encoder or decoder

    @property
    def row_input(self) -> str:
        """The input that holds the rows: z for the decoder, x otherwise."""
        return "z" if self.graph == "decoder" else "x"

    def inputs(self) -> list[TensorSpec]:
        """The inputs this model takes."""
        m = self.model.manifest
        cols = m.latent_dim if self.graph == "decoder" else m.input_dim
        out = [TensorSpec(self.row_input, "FP32", (cols,))]
        if m.cond_dim:
            out.append(TensorSpec("cond", "FP32", (m.cond_dim,)))
        return out

    def outputs(self) -> list[TensorSpec]:
        """The outputs this model can return."""
        m = self.model.manifest
        if self.graph == "encoder":
            return [TensorSpec(n, "FP32", (m.latent_dim,)) for n in ("mu", "logvar")]
        if self.graph == "decoder":
            return [TensorSpec("x_hat", "FP32", (m.input_dim,))]
        out = [
            TensorSpec("kl", "FP32", ()),
            TensorSpec("kl_per_dim", "FP32", (m.latent_dim,)),
            TensorSpec("recon_nll", "FP32", ()),
            TensorSpec("neg_elbo", "FP32", ()),
            TensorSpec("p_value", "FP64", ()),
            TensorSpec("is_anomaly", "BOOL", ()),
        ]
        if "iw_scorer" in self.model.batchers:
            out.append(TensorSpec("iw_nll", "FP32", ()))
        if self.model.monitoring.explain_baseline is not None:  # [-1, K]: K is the request's
            out.append(TensorSpec("explain_index", "INT64", (-1,)))
            out += [
                TensorSpec(f"explain_{name}", "FP32", (-1,))
                for name in ("nll", "excess", "value", "reconstruction")
            ]
        return out


def resolve_target(dataplane: DataPlane, name: str, version: str) -> Target:
    """Resolve NAME / NAME.encoder / NAME.decoder (NAME.scorer too) and a version string."""
    v = parse_version(version)
    models = dataplane.models()
    base, graph = name, "scorer"
    if name not in models and "." in name:
        head, _, tail = name.rpartition(".")
        if tail in GRAPH_SUFFIXES and head in models:
            base, graph = head, tail
    if name and base not in models:
        loaded = ", ".join(f"{n}, {n}.encoder, {n}.decoder" for n in models) or "none"
        raise RequestError.not_found(f"model {echo(name)} is not loaded; models: {loaded}")
    model = dataplane.model(base, v)
    if graph != "scorer":
        model.batcher(graph)  # FAILED_PRECONDITION when the export lacks it
    full = model.name if graph == "scorer" and name != f"{model.name}.scorer" else name
    return Target(full or model.name, model, graph)
