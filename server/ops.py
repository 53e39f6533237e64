"""What both protocols (vae.v1 and KServe v2) do with a model, independent of their messages.

Row and condition checks on numpy arrays, the batched encoder/decoder/scorer calls, p-values
and anomaly flags, and the pipelined request stream both streaming RPCs use. The servicers
only translate their messages to and from these.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np

from vaeserve.common.scores import SCORE_NAMES
from vaeserve.server.errors import RequestError
from vaeserve.server.observability import Metrics, note_call
from vaeserve.server.repository import LoadedModel, ModelRepository
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
R = TypeVar("R")


def unary(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]:
    """Decorate a servicer's unary RPC: readiness check, RequestError -> its status, other
    errors -> INTERNAL (logged). The servicer has `_check_ready()` and `ops` (a ModelOps)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            self._check_ready()
            return await fn(self, request, context)
        except RequestError as exc:
            self.ops.metrics.rejected(exc)
            await context.abort(exc.code, exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            log.exception("%s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__} failed: {exc}")
        raise AssertionError("unreachable")  # abort always raises

    return wrapper


def draw_normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 draws from Generator(PCG64(seed)) (float64 draws, cast)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal(shape).astype(np.float32)


def label(model: LoadedModel) -> str:
    """ "model 'digits' version 1", for messages."""
    return f"model {model.name!r} version {model.version}"


def check_shape(
    shape: list[int], what: str, cols: int, col_word: str, owner: str, max_rows: int
) -> None:
    """A 2-D [n, cols] shape with n within max_rows, or RequestError saying what to fix."""
    if len(shape) != 2:
        hint = f"; for one row send shape [1, {cols}]" if len(shape) == 1 else ""
        raise RequestError.invalid(f"{what}: shape {shape} is not 2-D [n, {cols}]{hint}")
    if shape[0] > max_rows:
        raise RequestError.too_large(
            f"{what} has {shape[0]} rows; this server takes at most {max_rows} rows per "
            "request (setting max_request_rows); split the batch",
            limit="max_request_rows",
        )
    if shape[1] != cols:
        raise RequestError.invalid(
            f"{what} has {shape[1]} {col_word} per row but {owner} expects {cols}"
        )


def finite_float32(a: np.ndarray, what: str) -> np.ndarray:
    """The array as float32, or RequestError counting the rows that hold NaN or inf."""
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, caught below
        a = a.astype(np.float32, copy=False)
    if a.size and not np.isfinite(a).all():
        bad = ~np.isfinite(a).all(axis=1)
        count = int(bad.sum())
        first = int(np.argmax(bad))
        raise RequestError.invalid(
            f"{what}: {count} of {a.shape[0]} rows hold NaN or inf (first at row index "
            f"{first}; values beyond float32 range count as inf); drop or impute those rows"
        )
    return a


def resolve_condition(
    model: LoadedModel,
    n: int,
    present: bool,
    read: Callable[[], np.ndarray],
    broadcast: bool = False,
) -> np.ndarray | None:
    """The condition rows a conditional model needs ([n, C]; [1, C] too when broadcast).

    `present`: whether the request carries a condition; `read()` returns it as a checked
    float32 [m, C] array (see check_shape and finite_float32).
    """
    m = model.manifest
    if m.cond_dim == 0:
        if present:
            raise RequestError.invalid(
                f"{label(model)} is unconditional (cond_dim 0); leave condition unset"
            )
        return None
    classes = f" (one-hot over {', '.join(m.condition_classes)})" if m.condition_classes else ""
    if not present:
        raise RequestError.invalid(
            f"{label(model)} is conditional: send condition as FLOAT32 [n, {m.cond_dim}]{classes}"
        )
    c = read()
    if c.shape[0] != n:
        if broadcast and c.shape[0] == 1:
            return np.repeat(c, n, axis=0)
        also = " or [1, C] for all rows" if broadcast else ""
        raise RequestError.invalid(
            f"condition has {c.shape[0]} rows but there are {n} rows; send one condition "
            f"row per row{also}"
        )
    return c


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


class ModelOps:
    """Model resolution and the batched graph calls, shared by both protocols' servicers."""

    def __init__(
        self, repository: ModelRepository, settings: ServerSettings, metrics: Metrics
    ) -> None:
        self.repo = repository
        self.settings = settings
        self.metrics = metrics

    def model(self, name: str, version: int = 0) -> LoadedModel:
        """Resolve a model (version 0: newest) and note it on the current call."""
        model = self.repo.get(name, version)
        note_call(model=model.name)
        return model

    async def encode(
        self, model: LoadedModel, x: np.ndarray, cond: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """rows -> {"mu", "logvar"}."""
        return await model.batcher("encoder").run(feeds("x", x, cond), x.shape[0])

    async def decode(
        self, model: LoadedModel, z: np.ndarray, cond: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """z -> {"x_hat"} in raw feature units."""
        return await model.batcher("decoder").run(feeds("z", z, cond), z.shape[0])

    def flag_settings(
        self, model: LoadedModel, score: str | None, threshold: float | None
    ) -> tuple[str, float]:
        """The flag's score (None: the model's default) and threshold (None: calibrated)."""
        cal = model.manifest.calibration
        score = score or cal.default_score
        if score not in SCORE_NAMES:
            raise RequestError.invalid(f"score {score!r} is not one of {', '.join(SCORE_NAMES)}")
        if threshold is not None:
            if not np.isfinite(threshold):
                raise RequestError.invalid("threshold must be a finite number (nats)")
            return score, float(threshold)
        if score in cal.thresholds:
            return score, float(cal.thresholds[score])
        raise RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{label(model)} has no calibrated threshold for {score}; send threshold",
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
        m = model.manifest
        n = x.shape[0]
        score, threshold = self.flag_settings(model, score, threshold)
        k = int(iw_samples)
        if k < 0:
            raise RequestError.invalid("iw_samples must be >= 0")
        if k > self.settings.max_iw_samples:
            raise RequestError.too_large(
                f"iw_samples = {k} is over this server's limit of {self.settings.max_iw_samples} "
                "(setting max_iw_samples)",
                limit="max_iw_samples",
            )
        inputs = feeds("x", x, cond)
        jobs = [model.batcher("scorer").run(inputs, n)]
        if k > 0:
            noise = draw_normal(seed, (k, n, m.latent_dim))
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


def done(value: Any) -> asyncio.Future:
    """A future that already holds `value`."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


@dataclass
class Answer(Generic[Resp]):
    """One stream message's response with what the metrics need to know about it."""

    response: Resp
    model: str = ""
    code: grpc.StatusCode | None = None
    rows: int = 0


class RequestStream(Generic[Req, Resp]):
    """A bidirectional stream answered in order with up to `depth` messages in flight.

    `start(msg)` begins one message's work and returns an awaitable Answer (called in message
    order, so it may resolve state such as a stream's pinned model); `rows(msg)` is the rows a
    message declares; `reject(msg, error)` answers a message refused before its work starts.
    A message that would take the rows received but not yet answered over
    `max_inflight_rows` (0: no limit) is answered RESOURCE_EXHAUSTED without being run.
    Reading stops while `depth` messages are queued (back-pressure), so memory stays bounded.
    """

    def __init__(
        self,
        start: Callable[[Req], Awaitable[Answer[Resp]]],
        rows: Callable[[Req], int],
        reject: Callable[[Req, RequestError], Answer[Resp]],
        depth: int,
        max_inflight_rows: int,
        metrics: Metrics,
    ) -> None:
        self.start = start
        self.rows = rows
        self.reject = reject
        self.depth = depth
        self.max_inflight_rows = max_inflight_rows
        self.metrics = metrics
        self.inflight_rows = 0

    def _begin(self, msg: Req) -> tuple[asyncio.Future, int, float]:
        t0 = time.perf_counter()
        n = max(0, int(self.rows(msg)))
        cap = self.max_inflight_rows
        if cap and self.inflight_rows + n > cap:
            err = RequestError.too_large(
                f"this stream has {self.inflight_rows} rows in flight and this message adds "
                f"{n}; the limit is {cap} rows received but not yet answered per stream "
                "(setting max_stream_inflight_rows); read answers before sending more, or "
                "send smaller batches",
                limit="max_stream_inflight_rows",
            )
            self.metrics.rejected(err)
            return done(self.reject(msg, err)), 0, t0
        self.inflight_rows += n
        return asyncio.ensure_future(self.start(msg)), n, t0

    async def run(self, requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        """Read `requests`, yield one response per message in order."""
        queue: asyncio.Queue[tuple[asyncio.Future, int, float] | None] = asyncio.Queue(
            maxsize=self.depth
        )
        read_error: list[BaseException] = []

        async def reader() -> None:
            try:
                async for msg in requests:
                    await queue.put(self._begin(msg))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the call broke (e.g. cancelled by the peer)
                read_error.append(exc)
            await queue.put(None)

        reader_task = asyncio.create_task(reader(), name="stream-reader")
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                fut, n, t0 = item
                answer: Answer[Resp] = await fut
                self.metrics.observe_stream_message(
                    answer.model, answer.code, answer.rows, time.perf_counter() - t0
                )
                yield answer.response
                self.inflight_rows -= n
            if read_error:
                raise read_error[0]
        finally:
            reader_task.cancel()
            while not queue.empty():
                item = queue.get_nowait()
                if item is not None:
                    item[0].cancel()
