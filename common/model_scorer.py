"""The fused scorer of one exported model, run in this process with the server's numbers.

`vae-server` runs scorer.onnx with onnxruntime and flags rows with `Flagger`
(common/flagging.py: p-values and `score > threshold`); explanations come from explainer.onnx
and `top_features`. `ModelScorer` does the same through the same functions without a server,
for engines that score where the data is: Ray actors, Spark tasks, `vae-client score
--model-dir`. On CPU, onnxruntime's result for a row depends neither on the
other rows of its batch nor on the thread count (tests/ray/test_model_scorer.py checks both),
so these scores equal the server's bit for bit on the same kind of CPU. onnxruntime is imported
when a scorer is opened, never by importing this module (the client installs without it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaeserve.common.explain import (
    ExplainUnavailable,
    TopFeatures,
    baseline,
    explain_count,
    top_features,
)
from vaeserve.common.flagging import Flagger
from vaeserve.common.manifest import Manifest, ManifestError, list_versions, load_manifest

DEVICES = ("cpu", "cuda", "auto")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def resolve_model_dir(model_repo: str | Path, model: str | None = None) -> Path:
    """REPO/NAME/VERSION for `model` ('NAME' for the newest version, 'NAME:VERSION'); with no
    model, the repository's only model. ManifestError says what the repository holds."""
    repo = Path(model_repo)
    if not repo.is_dir():
        raise ManifestError(f"{repo}: no such model repository")
    names = sorted(p.name for p in repo.iterdir() if p.is_dir() and list_versions(p))
    if model is None:
        if len(names) != 1:
            raise ManifestError(
                f"{repo} holds models {names or '(none)'}; name one with --model NAME[:VERSION]"
            )
        name, version = names[0], ""
    else:
        name, _, version = str(model).partition(":")
    versions = list_versions(repo / name)
    if not versions:
        raise ManifestError(f"{repo} has no model {name!r}; it holds {names or '(none)'}")
    if not version:
        return repo / name / str(versions[-1])
    if not version.isdigit() or int(version) not in versions:
        raise ManifestError(
            f"{repo} has no version {version!r} of model {name!r}; it has versions {versions}"
        )
    return repo / name / str(int(version))


@dataclass
class ScoredRows:
    """Scores of a batch of rows (float32 [n] unless noted), the flag's score/threshold, the
    posteriors the scores came from (None for exports from before drift monitoring) and, when
    asked for, each row's top features."""

    kl: np.ndarray
    kl_per_dim: np.ndarray  # [n, latent_dim]
    recon_nll: np.ndarray
    neg_elbo: np.ndarray
    p_value: np.ndarray  # float64
    is_anomaly: np.ndarray  # bool
    score: str
    threshold: float
    mu: np.ndarray | None = None  # [n, latent_dim]
    logvar: np.ndarray | None = None  # [n, latent_dim]
    explain: TopFeatures | None = None


class ModelScorer:
    """scorer.onnx of one model directory in an onnxruntime session, with p-values and flags
    computed as the server computes them (common/flagging.py), and explainer.onnx, loaded the
    first time an explanation is asked for."""

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        session: Any,
        device: str,
        open_graph: Callable[[str], Any] | None = None,
    ) -> None:
        """`open_graph(graph)` opens another graph of the model with the scorer's session
        options (ModelScorer.open passes one; without it, explanations are unavailable)."""
        self.model_dir = model_dir
        self.manifest = manifest
        self.session = session
        self.device = device
        self.providers: list[str] = list(session.get_providers())
        self._outputs = [o.name for o in session.get_outputs()]
        self.flagger = Flagger(manifest.calibration, f"model {self.label}")
        self._open_graph = open_graph
        self._explainer: Any = None

    @classmethod
    def open(
        cls,
        model_dir: str | Path,
        *,
        threads: int = 1,
        device: str = "cpu",
        device_id: int = 0,
        verify: bool = True,
    ) -> ModelScorer:
        """Load REPO/NAME/VERSION's scorer with the server's session options (sequential
        execution, full graph optimisation, no thread spinning) and `threads` intra-op threads
        (0: onnxruntime's default, one per core). device: cpu, cuda (fail without it) or auto.
        ManifestError for a missing or altered model, RuntimeError when CUDA does not load."""
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        model_dir = Path(model_dir)
        manifest = load_manifest(model_dir, verify=verify)
        if "scorer" not in manifest.graphs:
            raise ManifestError(f"{model_dir}: the manifest lists no scorer graph")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        want_cuda = device != "cpu" and _CUDA in ort.get_available_providers()
        if device == "auto" and want_cuda:
            options.log_severity_level = 4  # a CPU-only machine's CUDA load failure is expected
        providers: list[Any] = [_CPU]
        if want_cuda:
            providers.insert(0, (_CUDA, {"device_id": str(device_id)}))

        def open_graph(graph: str) -> Any:
            path = os.fspath(model_dir / manifest.graphs[graph].file)
            return ort.InferenceSession(path, options, providers=providers)

        session = open_graph("scorer")
        on_cuda = _CUDA in session.get_providers()
        if device == "cuda" and not on_cuda:
            raise RuntimeError(
                f"{model_dir / manifest.graphs['scorer'].file}: device 'cuda' was asked for but "
                f"onnxruntime runs it on {session.get_providers()}: the CUDA execution provider "
                "did not load (needs onnxruntime-gpu with its CUDA and cuDNN libraries and a "
                "visible GPU)"
            )
        return cls(model_dir, manifest, session, "cuda" if on_cuda else "cpu", open_graph)

    @property
    def label(self) -> str:
        """'NAME:VERSION' of the model."""
        return f"{self.manifest.name}:{self.manifest.version}"

    def flag_settings(
        self, score: str | None = None, threshold: float | None = None
    ) -> tuple[str, float]:
        """The flag's score (None: the model's default) and threshold (None: calibrated), as
        the server chooses them; ValueError for an unknown score, a non-finite threshold or
        a score without a calibrated threshold."""
        return self.flagger.choose(score, threshold)

    def _feeds(self, x: np.ndarray, cond: np.ndarray | None) -> dict[str, np.ndarray]:
        feeds = {"x": np.ascontiguousarray(x, dtype=np.float32)}
        if cond is not None:
            feeds["cond"] = np.ascontiguousarray(cond, dtype=np.float32)
        return feeds

    def score(
        self,
        x: np.ndarray,
        cond: np.ndarray | None = None,
        *,
        score: str | None = None,
        threshold: float | None = None,
        explain: int = 0,
    ) -> ScoredRows:
        """Scores, p-values and flags of float32 rows [n, input_dim] (and condition rows);
        with explain = K > 0 also each row's top K features (see `explain`)."""
        name, limit = self.flag_settings(score, threshold)
        out = dict(
            zip(self._outputs, self.session.run(self._outputs, self._feeds(x, cond)), strict=True)
        )
        flags = self.flagger.flag(out, name, limit)
        return ScoredRows(
            kl=out["kl"],
            kl_per_dim=out["kl_per_dim"],
            recon_nll=out["recon_nll"],
            neg_elbo=out["neg_elbo"],
            p_value=flags.p_value,
            is_anomaly=flags.is_anomaly,
            score=name,
            threshold=limit,
            mu=out.get("mu"),
            logvar=out.get("logvar"),
            explain=self.explain(x, cond, explain) if explain > 0 else None,
        )

    def explain(self, x: np.ndarray, cond: np.ndarray | None, k: int) -> TopFeatures:
        """Each row's top k features (k above input_dim: all of them), from explainer.onnx as
        the server runs it; ExplainUnavailable for an export without the explainer."""
        base = baseline(self.manifest)
        if self._explainer is None:
            if self._open_graph is None:
                raise ExplainUnavailable(f"model {self.label}: no way to open its explainer graph")
            self._explainer = self._open_graph("explainer")
        feeds = self._feeds(x, cond)
        per_feature, x_hat = self._explainer.run(["recon_nll_per_feature", "x_hat"], feeds)
        k = explain_count(k, self.manifest.input_dim)
        return top_features(per_feature, feeds["x"], x_hat, k, base)

    def posteriors(
        self, x: np.ndarray, cond: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar) [n, latent_dim] of rows, from the scorer's posterior outputs: what a
        server's drift window is fed. ManifestError for an export without them."""
        if "mu" not in self._outputs or "logvar" not in self._outputs:
            raise ManifestError(
                f"model {self.label}: its scorer graph has no mu/logvar outputs; re-export it "
                "with this vae-export"
            )
        mu, logvar = self.session.run(["mu", "logvar"], self._feeds(x, cond))
        return mu, logvar
