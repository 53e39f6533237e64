"""The model directory contract shared by export (writer) and server (reader).

A model directory is REPO/NAME/VERSION/ holding ONNX graphs and `manifest.json`. This module
is torch-free and onnxruntime-free so that every part of vaeserve can read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vaeserve.common.scores import DEFAULT_SCORE

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
GRAPH_NAMES = ("encoder", "decoder", "scorer", "iw_scorer", "explainer")


class ManifestError(ValueError):
    """A model directory that cannot be used: missing files, bad hashes, unknown format."""


@dataclass
class GraphTensorSpec:
    name: str
    shape: list[int | str]  # str entries are symbolic (dynamic) axes such as "batch"
    dtype: str = "float32"


@dataclass
class GraphSpec:
    file: str
    sha256: str
    inputs: list[GraphTensorSpec]
    outputs: list[GraphTensorSpec]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(
            file=d["file"],
            sha256=d["sha256"],
            inputs=[GraphTensorSpec(**t) for t in d["inputs"]],
            outputs=[GraphTensorSpec(**t) for t in d["outputs"]],
        )


@dataclass
class Calibration:
    """Per-row score distributions on the validation split, as quantiles.

    `quantiles[score][i]` is the value of `score` at probability `levels[i]`.
    """

    rows: int
    levels: list[float]
    quantiles: dict[str, list[float]]
    thresholds: dict[str, float]
    threshold_quantile: float = 0.99
    default_score: str = DEFAULT_SCORE


@dataclass
class ExplainSpec:
    """What the explainer graph's per-feature NLLs are compared with: each feature's mean
    reconstruction NLL over the validation rows (nats, raw units), so rankings do not depend
    on the features' units (see docs/monitoring.md)."""

    rows: int
    baseline_nll: list[float]


@dataclass
class DriftSpec:
    """The validation split's aggregated posterior as a Gaussian and the null distribution of
    the drift statistic KL(N(window) || N(reference)) per window size, as quantiles.

    The reference covariance is `cov_means + diag(posterior_var)`, fitted to the rows after
    clipping them to `clip_radius` of that same Gaussian (see common/gaussian.py:
    clip_posteriors); `quantiles[i][j]` is the null statistic at probability `levels[j]` for
    windows of `window_sizes[i]` rows.
    """

    rows: int
    mean: list[float]
    cov_means: list[list[float]]
    posterior_var: list[float]
    clip_radius: float
    null_method: str  # "bootstrap" or "parametric"
    replicates: int
    seed: int
    window_sizes: list[int]
    levels: list[float]
    quantiles: list[list[float]]


@dataclass
class Manifest:
    name: str
    version: int
    input_dim: int
    latent_dim: int
    cond_dim: int
    likelihood: str
    feature_names: list[str]
    condition_classes: list[str] | None
    normalisation: dict[str, list[float]]
    graphs: dict[str, GraphSpec]
    calibration: Calibration
    training: dict[str, Any] = field(default_factory=dict)
    opset: int = 18
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    # optional: exports before explain/drift monitoring lack them (None)
    explain: ExplainSpec | None = None
    drift: DriftSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        fv = d.get("format_version")
        if fv != FORMAT_VERSION:
            raise ManifestError(
                f"manifest format_version {fv!r} is not supported (this vaeserve reads "
                f"{FORMAT_VERSION}); re-export the model with this version of vae-export"
            )
        d = dict(d)
        d["graphs"] = {k: GraphSpec.from_dict(v) for k, v in d["graphs"].items()}
        d["calibration"] = Calibration(**d["calibration"])
        if d.get("explain") is not None:
            d["explain"] = ExplainSpec(**d["explain"])
        if d.get("drift") is not None:
            d["drift"] = DriftSpec(**d["drift"])
        return cls(**d)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(model_dir: str | Path, verify: bool = True) -> Manifest:
    """Read REPO/NAME/VERSION/manifest.json; with verify, check every graph's sha256."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{model_dir}: no {MANIFEST_FILE}; is this a vae-export directory?")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from exc
    if verify:
        verify_graphs(model_dir, manifest)
    return manifest


def verify_graphs(model_dir: Path, manifest: Manifest) -> None:
    """Raise ManifestError when a graph file is missing or its sha256 differs."""
    for name, spec in manifest.graphs.items():
        f = model_dir / spec.file
        if not f.is_file():
            raise ManifestError(f"{model_dir}: graph {name!r} file {spec.file} is missing")
        digest = sha256_file(f)
        if digest != spec.sha256:
            raise ManifestError(
                f"{f}: sha256 {digest[:12]}... does not match the manifest's "
                f"{spec.sha256[:12]}...; the file was changed after export"
            )


def list_versions(model_root: Path) -> list[int]:
    """Integer version folders under REPO/NAME that hold a manifest, ascending."""
    if not model_root.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_root.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / MANIFEST_FILE).is_file()
    )
