"""LocalModelClient: the part of VaeClient that score and drift jobs use (model_info, score,
encode), answered by an exported model in this process instead of a server.

It lets every score driver run without `vae-server`: `vae-client score --model-dir`, and each
Ray actor of `--engine ray` in in-process mode, and `vae-client drift --model-dir`. Scores
and explanations come from `ModelScorer`, which computes them as the server does, so a job
gives the same output either way. onnxruntime is imported when the model is opened.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from vaeserve.client.batches import coerce_batch
from vaeserve.client.errors import VaeClientError
from vaeserve.client.models import ModelInfo, ModelLike, format_model, parse_model
from vaeserve.client.results import EncodeResult, Explanation, ScoreResult
from vaeserve.common.manifest import Manifest, ManifestError
from vaeserve.common.model_scorer import ModelScorer


def model_info_from_manifest(
    manifest: Manifest, providers: Sequence[str] = (), device: str = "cpu"
) -> ModelInfo:
    """The ModelInfo a server would give for a model directory's manifest."""
    cal = manifest.calibration
    return ModelInfo(
        name=manifest.name,
        version=manifest.version,
        versions=[manifest.version],
        providers=list(providers),
        device=device,
        input_dim=manifest.input_dim,
        latent_dim=manifest.latent_dim,
        cond_dim=manifest.cond_dim,
        feature_names=list(manifest.feature_names),
        condition_classes=list(manifest.condition_classes or []),
        likelihood=manifest.likelihood,
        default_score=cal.default_score,
        thresholds=dict(cal.thresholds),
        ready=True,
        manifest=manifest.to_dict(),
        explain=manifest.explain is not None and "explainer" in manifest.graphs,
    )


class LocalModelClient:
    """Scores batches with one model directory's scorer in this process (see the module
    docstring); a context manager, like VaeClient."""

    def __init__(
        self, model_dir: str | Path, *, threads: int = 1, device: str = "cpu", verify: bool = True
    ) -> None:
        """Open the model; VaeClientError(NOT_FOUND) when it is missing or altered."""
        try:
            self.scorer = ModelScorer.open(model_dir, threads=threads, device=device, verify=verify)
        except ManifestError as exc:
            raise VaeClientError(str(exc), code=grpc.StatusCode.NOT_FOUND) from None
        except RuntimeError as exc:
            raise VaeClientError(str(exc), code=grpc.StatusCode.FAILED_PRECONDITION) from None
        except ImportError as exc:
            raise VaeClientError(
                f"in-process scoring needs onnxruntime ({exc}); install vaeserve[ray] or "
                "vaeserve[serve]"
            ) from None
        manifest = self.scorer.manifest
        self.info = model_info_from_manifest(manifest, self.scorer.providers, self.scorer.device)
        self.target = str(model_dir)

    def __enter__(self) -> LocalModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release beyond the session, which goes with the object."""

    def model_info(self, model: ModelLike = None, **_: Any) -> ModelInfo:
        """This model's ModelInfo; NOT_FOUND when `model` names another one."""
        self._check_model(model)
        return self.info

    def _check_model(self, model: ModelLike) -> None:
        if model is None:
            return
        ref = parse_model(model)
        if ref.name != self.info.name or ref.version not in (0, self.info.version):
            raise VaeClientError(
                f"{self.target} holds model {self.info.name}:{self.info.version}, not "
                f"{format_model(ref)}",
                code=grpc.StatusCode.NOT_FOUND,
            )

    def score(
        self,
        batches: Iterable[Any],
        *,
        model: ModelLike = None,
        score: str | None = None,
        threshold: float | None = None,
        include_kl_per_dim: bool = False,
        iw_samples: int = 0,
        seed: int = 0,
        explain: int = 0,
        columns: Sequence[str] | None = None,
        raise_errors: bool = True,
        **_: Any,
    ) -> Iterator[ScoreResult]:
        """VaeClient.score's results for the same batches, one batch at a time; rows that
        the server would refuse (wrong width, NaN or inf) make their batch's result an
        INVALID_ARGUMENT error (raised unless `raise_errors=False`). `explain` = K > 0 adds
        each row's top K features from the model's explainer graph, as a server computes them
        (FAILED_PRECONDITION for an export without one)."""
        self._check_model(model)
        if explain < 0:
            raise VaeClientError(f"explain must be >= 0, got {explain}")
        if explain and not self.info.explain:
            raise VaeClientError(
                f"model {self.info.name}:{self.info.version} was exported without an explainer; "
                "re-export it with this version of vae-export for explanations",
                code=grpc.StatusCode.FAILED_PRECONDITION,
            )
        if iw_samples:
            raise VaeClientError(
                "in-process scoring computes kl, recon_nll and neg_elbo; iw_nll (--iw-samples) "
                "needs a server (--server)"
            )
        try:
            flag = self.scorer.flag_settings(score, threshold)
        except ValueError as exc:
            raise VaeClientError(str(exc), code=grpc.StatusCode.INVALID_ARGUMENT) from None
        offset = 0
        for index, item in enumerate(batches):
            batch = coerce_batch(item, columns)
            n = len(batch.rows)
            if batch.start is not None:
                offset = batch.start
            ids = (
                batch.row_ids
                if batch.row_ids is not None
                else np.arange(offset, offset + n, dtype=np.int64)
            )
            offset += n
            result = self._score_one(index, batch.rows, batch.condition, ids, flag, explain)
            if result.error is not None and raise_errors:
                raise result.error
            if not include_kl_per_dim:
                result.kl_per_dim = None
            yield result

    def _score_one(
        self,
        index: int,
        rows: np.ndarray,
        cond: np.ndarray | None,
        ids: np.ndarray,
        flag: tuple[str, float],
        explain: int = 0,
    ) -> ScoreResult:
        model = (self.info.name, self.info.version)
        n = len(rows)
        if n == 0:
            return ScoreResult.empty(index, model=model)
        problem = self._invalid(rows, cond)
        if problem:
            error = VaeClientError(
                f"batch {index} rejected: {problem}",
                code=grpc.StatusCode.INVALID_ARGUMENT,
                details=problem,
            )
            return ScoreResult.empty(index, rows=n, model=model, error=error)
        out = self.scorer.score(rows, cond, score=flag[0], threshold=flag[1], explain=explain)
        return ScoreResult(
            index=index,
            row_ids=np.asarray(ids, np.int64),
            kl=out.kl,
            recon_nll=out.recon_nll,
            neg_elbo=out.neg_elbo,
            p_value=out.p_value,
            is_anomaly=out.is_anomaly,
            kl_per_dim=out.kl_per_dim,
            score=out.score,
            threshold=out.threshold,
            model=model,
            rows=n,
            explain=(
                Explanation.from_top(out.explain).named(self.info.feature_names)
                if out.explain is not None
                else None
            ),
        )

    def encode(
        self, rows: Any, *, model: ModelLike = None, condition: Any = None, **_: Any
    ) -> EncodeResult:
        """Posterior mean and log-variance of each row, from the scorer graph's posterior
        outputs (what a server's drift window is fed); rows the server would refuse raise
        VaeClientError(INVALID_ARGUMENT)."""
        self._check_model(model)
        x = np.asarray(rows, np.float32)
        cond = None if condition is None else np.asarray(condition, np.float32)
        if x.ndim != 2:
            raise VaeClientError(
                f"rows must be 2-D [n, {self.info.input_dim}], got shape {x.shape}",
                code=grpc.StatusCode.INVALID_ARGUMENT,
            )
        problem = self._invalid(x, cond)
        if problem:
            raise VaeClientError(problem, code=grpc.StatusCode.INVALID_ARGUMENT)
        try:
            mu, logvar = self.scorer.posteriors(x, cond)
        except ManifestError as exc:
            raise VaeClientError(str(exc), code=grpc.StatusCode.FAILED_PRECONDITION) from None
        return EncodeResult(mu=mu, logvar=logvar, z=None, model=(self.info.name, self.info.version))

    def _invalid(self, rows: np.ndarray, cond: np.ndarray | None) -> str:
        """Why the server would refuse these rows ('' when it would not)."""
        info = self.info
        if rows.shape[1] != info.input_dim:
            return (
                f"rows has {rows.shape[1]} features per row but model {info.name} version "
                f"{info.version} expects {info.input_dim}"
            )
        if info.cond_dim and cond is None:
            return f"model {info.name} is conditional: send a condition of {info.cond_dim} columns"
        if not info.cond_dim and cond is not None:
            return f"model {info.name} is not conditional: send no condition"
        if cond is not None and cond.shape[1] != info.cond_dim:
            return f"condition has {cond.shape[1]} columns but the model expects {info.cond_dim}"
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            return (
                f"rows: {int(bad.sum())} of {len(rows)} rows hold NaN or inf (first at row "
                f"index {int(np.argmax(bad))})"
            )
        return ""
