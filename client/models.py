"""Model references ('name', 'name:version', (name, version)) and what the server says about
its models (ModelInfo, ModelSummary)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vaeserve.client.errors import VaeClientError
from vaeserve.common.scores import DEFAULT_SCORE, KIND_NAMES
from vaeserve.proto.vae.v1 import vae_pb2

ModelLike = str | tuple[str, int] | None


def parse_model(model: ModelLike) -> vae_pb2.ModelRef:
    """'name', 'name:version', (name, version) or None (the server's default) to a ModelRef."""
    if model is None:
        return vae_pb2.ModelRef()
    if isinstance(model, tuple):
        name, version = model
        return vae_pb2.ModelRef(name=name, version=int(version or 0))
    name, sep, version = str(model).partition(":")
    if sep and not version.isdigit():
        raise VaeClientError(f"model {model!r}: the version after ':' must be an integer")
    if not name:
        raise VaeClientError(f"model {model!r}: the name is empty")
    return vae_pb2.ModelRef(name=name, version=int(version) if sep else 0)


def format_model(ref: vae_pb2.ModelRef | tuple[str, int]) -> str:
    """'name:version' (or 'name' when the version is 0) for messages."""
    name, version = (ref.name, ref.version) if isinstance(ref, vae_pb2.ModelRef) else ref
    return f"{name}:{version}" if version else name


@dataclass
class ModelInfo:
    """What the server says about one loaded model version."""

    name: str
    version: int
    versions: list[int]
    providers: list[str]
    device: str
    input_dim: int
    latent_dim: int
    cond_dim: int
    feature_names: list[str]
    condition_classes: list[str]
    likelihood: str
    default_score: str
    thresholds: dict[str, float]
    ready: bool
    manifest: dict[str, Any] = field(default_factory=dict)
    explain: bool = False  # explanations can be asked for (ScoreRequest.explain)
    drift_window_rows: int = 0  # the server's drift window (0: none; VaeClient.drift fails)
    unavailable: str = ""  # why explanations or drift are not offered, when one is not

    @classmethod
    def from_reply(cls, reply: vae_pb2.ModelInfoResponse) -> ModelInfo:
        """Read a ModelInfo answer; an unparsable manifest reads as empty."""
        schema = reply.schema
        try:
            manifest = json.loads(reply.manifest_json) if reply.manifest_json else {}
        except json.JSONDecodeError:
            manifest = {}
        return cls(
            name=reply.model.name,
            version=reply.model.version,
            versions=list(reply.versions),
            providers=list(reply.providers),
            device=reply.device,
            input_dim=schema.input_dim,
            latent_dim=schema.latent_dim,
            cond_dim=schema.cond_dim,
            feature_names=list(schema.feature_names),
            condition_classes=list(schema.condition_classes),
            likelihood=schema.likelihood,
            default_score=KIND_NAMES.get(schema.default_score, DEFAULT_SCORE),
            thresholds=dict(schema.thresholds),
            ready=reply.ready,
            manifest=manifest,
            explain=reply.monitoring.explain,
            drift_window_rows=reply.monitoring.drift_window_rows,
            unavailable=reply.monitoring.unavailable,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, without the manifest (it is large)."""
        d = dict(self.__dict__)
        d.pop("manifest")
        return d


@dataclass
class ModelSummary:
    """One entry of ListModels."""

    name: str
    versions: list[int]
    latest: int
    ready: bool
