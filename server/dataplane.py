"""The data plane: what both protocols (vae.v1 and KServe v2) do with the models.

Readiness, model resolution, and the batched encoder, decoder and scorer calls with p-values
and anomaly flags, on numpy arrays the servicers have decoded and validated
(server/validation.py). The servicers only translate their messages to and from these calls.

Random draws use numpy's Generator(PCG64(seed)) in float64, cast to float32, so a client can
reproduce them:
  encode (sample):      eps = standard_normal((n, latent_dim)); z = mu + exp(logvar / 2) * eps
  sample:               z = standard_normal((n, latent_dim))
  score (iw_samples=K): noise = standard_normal((K, n, latent_dim))
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from vaeserve.server import validation
from vaeserve.server.call_context import note_call
from vaeserve.server.errors import RequestError
from vaeserve.server.metrics import Metrics
from vaeserve.server.repository import LoadedModel, ModelRepository
from vaeserve.server.settings import ServerSettings


def draw_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 draws from Generator(PCG64(seed)) (float64 draws, cast)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal(shape).astype(np.float32)


def feeds(x_name: str, x: np.ndarray, cond: np.ndarray | None) -> dict[str, np.ndarray]:
    """Graph inputs: the rows under `x_name` and `cond` when there is one."""
    out = {x_name: x}
    if cond is not None:
        out["cond"] = cond
    return out


@dataclass
class RowScores:
    """The scores of a batch of rows (FP32 [n] unless noted), with the flag's score/threshold."""

    kl: np.ndarray
    kl_per_dim: np.ndarray  # [n, latent_dim]
    recon_nll: np.ndarray
    neg_elbo: np.ndarray
    p_value: np.ndarray  # float64
    is_anomaly: np.ndarray  # bool
    score: str
    threshold: float
    iw_nll: np.ndarray | None = None


class DataPlane:
    """Readiness, model resolution and the batched graph calls, shared by both servicers."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: ServerSettings,
        metrics: Metrics,
        is_ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.repo = repository
        self.settings = settings
        self.metrics = metrics
        self.is_ready = is_ready

    # ---- readiness and models ------------------------------------------------------------
    def check_ready(self) -> None:
        """UNAVAILABLE while the server is starting or stopping."""
        if not self.is_ready():
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                "the server is starting or stopping (models not ready); retry shortly",
            )

    def model(self, name: str, version: int = 0) -> LoadedModel:
        """Resolve a model (version 0: newest) and note it on the current call."""
        model = self.repo.get(name, version)
        note_call(model=model.name)
        return model

    def models(self) -> dict[str, list[int]]:
        """Every loaded model name with its versions, sorted."""
        return {name: sorted(v) for name, v in sorted(self.repo.snapshot().items())}

    def versions(self, name: str) -> list[int]:
        """The loaded versions of one model, sorted (empty when it is not loaded)."""
        return sorted(self.repo.snapshot().get(name, {}))

    # ---- graph calls ---------------------------------------------------------------------
    async def encode(
        self,
        model: LoadedModel,
        x: np.ndarray,
        cond: np.ndarray | None,
        sample: bool = False,
        seed: int = 0,
    ) -> dict[str, np.ndarray]:
        """rows -> {"mu", "logvar"}, with sample also "z" = mu + exp(logvar / 2) * eps."""
        out = await model.batcher("encoder").run(feeds("x", x, cond), x.shape[0])
        if sample:
            eps = draw_normal(seed, out["mu"].shape)
            z = out["mu"] + np.exp(0.5 * out["logvar"]) * eps
            out = {**out, "z": z.astype(np.float32, copy=False)}
        return out

    async def decode(
        self, model: LoadedModel, z: np.ndarray, cond: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """z -> {"x_hat"} in raw feature units."""
        return await model.batcher("decoder").run(feeds("z", z, cond), z.shape[0])

    async def sample(
        self, model: LoadedModel, n: int, cond: np.ndarray | None, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """n draws z ~ N(0, I) from the seed, decoded: {"x_hat", "z"}."""
        z = draw_normal(seed, (n, model.manifest.latent_dim))
        out = await self.decode(model, z, cond)
        return {**out, "z": z}

    async def reconstruct(
        self, model: LoadedModel, x: np.ndarray, cond: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """rows -> {"x_hat"}: the decoder at the posterior mean."""
        model.batcher("decoder")  # FAILED_PRECONDITION before any work when it is missing
        enc = await self.encode(model, x, cond)
        return await self.decode(model, enc["mu"], cond)

    def flag_settings(
        self, model: LoadedModel, score: str | None, threshold: float | None
    ) -> tuple[str, float]:
        """The flag's score (None: the model's default) and threshold (None: calibrated)."""
        cal = model.manifest.calibration
        score = validation.check_score_name(score or cal.default_score)
        if threshold is not None:
            return score, validation.check_threshold(threshold)
        if score in cal.thresholds:
            return score, float(cal.thresholds[score])
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{model.label} has no calibrated threshold for {score}; send threshold",
        )

    async def score(
        self,
        model: LoadedModel,
        x: np.ndarray,
        cond: np.ndarray | None,
        score: str | None = None,
        threshold: float | None = None,
        iw_samples: int = 0,
        seed: int = 0,
    ) -> RowScores:
        """Scores, p-values and flags of rows; with iw_samples > 0 also the IW NLL."""
        n = x.shape[0]
        score, threshold = self.flag_settings(model, score, threshold)
        k = validation.check_iw_samples(int(iw_samples), self.settings.max_iw_samples)
        inputs = feeds("x", x, cond)
        jobs = [model.batcher("scorer").run(inputs, n)]
        if k > 0:
            noise = draw_normal(seed, (k, n, model.manifest.latent_dim))
            jobs.append(model.batcher("iw_scorer").run({**inputs, "noise": noise}, n, key=k))
        outs = await asyncio.gather(*jobs)
        out = outs[0]
        flag_scores = np.asarray(out[score])
        pvalues = model.pvalues.get(score)
        p = pvalues(flag_scores) if pvalues is not None else np.full(n, np.nan, np.float64)
        flags = flag_scores > threshold
        self.metrics.scored(model.name, score, flags)
        return RowScores(
            kl=out["kl"],
            kl_per_dim=out["kl_per_dim"],
            recon_nll=out["recon_nll"],
            neg_elbo=out["neg_elbo"],
            p_value=np.asarray(p, np.float64),
            is_anomaly=flags,
            score=score,
            threshold=threshold,
            iw_nll=outs[1]["iw_nll"] if k > 0 else None,
        )
