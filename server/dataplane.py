"""The data plane: what both protocols (vae.v1 and KServe v2) do with the models.

Readiness, model resolution, and the batched encoder, decoder and scorer calls with p-values
and anomaly flags (common/flagging.py, shared with in-process scoring), explanations on request
and the drift window fed from every scored batch (server/monitoring.py), on numpy arrays the
servicers have decoded and validated (server/validation.py). The servicers only translate
their messages to and from these calls.

An explanation runs the explainer graph beside the scorer (both batched, concurrently) and
ranks the features off the event loop; without one the explainer is never called.

Random draws use numpy's Generator(PCG64(seed)) in float64, cast to float32, so a client can
reproduce them:
  encode (sample):      eps = standard_normal((n, latent_dim)); z = mu + exp(logvar / 2) * eps
  sample:               z = standard_normal((n, latent_dim))
  score (iw_samples=K): noise = standard_normal((K, n, latent_dim))

Importance sampling runs the decoder on K x n sample rows, so one request within the default
limits (4096 rows, K = 256) would be a million-row graph call holding gigabytes. Its rows are
therefore scored in slices of at most IW_CALL_VALUES / (K x width) rows per graph call (width:
the model's widest layer), which bounds that call's memory whatever K and n are; each row's
result does not depend on the slicing. After a request of IW_RELEASE_SAMPLE_ROWS sample rows
or more, the graph's onnxruntime arena shrinks and glibc returns its free pages
(server/memory.py), so the memory is given back, not kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from vaeserve.common.explain import TopFeatures, explain_count, top_features
from vaeserve.common.flagging import NoCalibratedThreshold
from vaeserve.server import tracing, validation
from vaeserve.server.call_context import note_call
from vaeserve.server.errors import RequestError
from vaeserve.server.memory import release_memory
from vaeserve.server.metrics import Metrics
from vaeserve.server.monitoring import DriftReading
from vaeserve.server.repository import LoadedModel, ModelRepository
from vaeserve.server.settings import ServerSettings

IW_CALL_VALUES = 1 << 22  # sample rows x layer width of one importance-sampling graph call
IW_RELEASE_SAMPLE_ROWS = 1 << 16  # after a request of this many sample rows, free memory
_DRAW_SLAB = 1 << 20  # float64 draws made at once (8 MB), cast into the float32 result


def draw_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 draws from Generator(PCG64(seed)) (float64 draws, cast).

    Drawn in slabs, which gives the same numbers as one call without a float64 copy of the
    whole array.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    out = np.empty(shape, np.float32)
    flat = out.reshape(-1)
    for start in range(0, flat.size, _DRAW_SLAB):
        flat[start : start + _DRAW_SLAB] = rng.standard_normal(min(_DRAW_SLAB, flat.size - start))
    return out


def model_width(model: LoadedModel) -> int:
    """The widest layer of a model: its features or its largest hidden layer (1024 when the
    manifest does not say)."""
    m = model.manifest
    config = m.training.get("config") if isinstance(m.training, dict) else None
    hidden = config.get("hidden") if isinstance(config, dict) else None
    if isinstance(hidden, list) and hidden and all(isinstance(h, int) for h in hidden):
        return max(m.input_dim, m.latent_dim, *hidden)
    return max(m.input_dim, m.latent_dim, 1024)


def iw_rows_per_call(model: LoadedModel, k: int) -> int:
    """Rows of one importance-sampling graph call with k samples per row (at least 1)."""
    return max(1, IW_CALL_VALUES // (max(1, k) * model_width(model)))


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
    explain: TopFeatures | None = None  # [n, K] arrays, only when asked for


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
        tracing.note_model(model.name, model.version)
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
        if score is not None:
            validation.check_score_name(score)
        if threshold is not None:
            validation.check_threshold(threshold)
        try:
            return model.flagger.choose(score, threshold)
        except NoCalibratedThreshold as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        except ValueError as exc:  # the manifest's own default score
            raise RequestError.invalid(f"{model.label}: {exc}") from None

    def explain_count(self, model: LoadedModel, k: int) -> int:
        """Top features per row an explanation of k gets (0: none asked for): within
        max_explain_features, and FAILED_PRECONDITION for a model without an explainer."""
        k = validation.check_explain(k, self.settings.max_explain_features)
        if k and model.monitoring.explain_baseline is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, model.monitoring.unavailable["explain"]
            )
        return explain_count(k, model.manifest.input_dim)

    async def score(
        self,
        model: LoadedModel,
        x: np.ndarray,
        cond: np.ndarray | None,
        score: str | None = None,
        threshold: float | None = None,
        iw_samples: int = 0,
        seed: int = 0,
        explain: int = 0,
    ) -> RowScores:
        """Scores, p-values and flags of rows; with iw_samples > 0 also the IW NLL, with
        explain = K > 0 also each row's top K features. The rows' posteriors go to the
        model's drift window."""
        n = x.shape[0]
        score, threshold = self.flag_settings(model, score, threshold)
        k = validation.check_iw_samples(int(iw_samples), self.settings.max_iw_samples)
        top_k = self.explain_count(model, int(explain))
        scored = model.batcher("scorer").run(feeds("x", x, cond), n)
        iw = self._iw_nll(model, x, cond, k, seed) if k > 0 else None
        why = self._explain(model, x, cond, top_k) if top_k > 0 else None
        jobs = [job for job in (scored, iw, why) if job is not None]
        outs = list(await asyncio.gather(*jobs))
        out = outs.pop(0)
        iw_nll = outs.pop(0) if iw is not None else None
        explanation = outs.pop(0) if why is not None else None
        flags = model.flagger.flag(out, score, threshold)
        self.metrics.scored(model.name, score, flags.is_anomaly)
        drift = model.monitoring.drift
        if drift is not None and n:
            drift.add(out["mu"], out["logvar"])
        return RowScores(
            kl=out["kl"],
            kl_per_dim=out["kl_per_dim"],
            recon_nll=out["recon_nll"],
            neg_elbo=out["neg_elbo"],
            p_value=flags.p_value,
            is_anomaly=flags.is_anomaly,
            score=score,
            threshold=threshold,
            iw_nll=iw_nll,
            explain=explanation,
        )

    async def _explain(
        self, model: LoadedModel, x: np.ndarray, cond: np.ndarray | None, k: int
    ) -> TopFeatures:
        """Each row's top k features: the explainer graph (batched like the scorer), then the
        ranking (a sort of n x D values) on a worker thread, off the event loop."""
        out = await model.batcher("explainer").run(feeds("x", x, cond), x.shape[0])
        return await asyncio.get_running_loop().run_in_executor(
            None,
            top_features,
            out["recon_nll_per_feature"],
            x,
            out["x_hat"],
            k,
            model.monitoring.explain_baseline,
        )

    async def drift(self, model: LoadedModel) -> DriftReading:
        """The model's drift window now (evaluated on a worker thread when rows arrived since
        the last reading), also published as gauges; FAILED_PRECONDITION when it keeps none."""
        drift = model.monitoring.drift
        if drift is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, model.monitoring.unavailable["drift"]
            )
        reading = await asyncio.get_running_loop().run_in_executor(None, drift.reading)
        if self.repo.snapshot().get(model.name, {}).get(model.version) is model:
            self.metrics.drift_observed(model.name, model.version, reading)  # not once unloaded
        return reading

    async def refresh_drift(self) -> None:
        """Evaluate every loaded version's drift window (the periodic task's work)."""
        for model in self.repo.loaded():
            if model.monitoring.drift is not None:
                await self.drift(model)

    async def _iw_nll(
        self, model: LoadedModel, x: np.ndarray, cond: np.ndarray | None, k: int, seed: int
    ) -> np.ndarray:
        """The importance-weighted NLL of each row from k samples, in slices of rows that
        bound each graph call's memory (see the module docstring)."""
        batcher = model.batcher("iw_scorer")
        n = x.shape[0]
        shape = (k, n, model.manifest.latent_dim)
        noise = await asyncio.get_running_loop().run_in_executor(None, draw_normal, seed, shape)
        step = iw_rows_per_call(model, k)
        large = k * n >= IW_RELEASE_SAMPLE_ROWS
        parts = []
        for start in range(0, n, step):
            part = slice(start, min(n, start + step))
            inputs = feeds("x", x[part], cond[part] if cond is not None else None)
            inputs["noise"] = noise[:, part]
            release = large and part.stop == n
            out = await batcher.run(inputs, part.stop - start, k, step, release=release)
            parts.append(out["iw_nll"])
            del inputs, out  # the last slice's view must not keep the noise alive
        del noise
        if large:  # the graph's arena shrank after the last slice; now glibc's free pages
            await asyncio.get_running_loop().run_in_executor(None, release_memory)
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
