"""The Ray engine of a dataset job: parts scored by a pool of Ray actors through Ray Data.

The parts become a Dataset of one row each; `map_batches` hands them one at a time to a fixed
pool of `PartWorker` actors (Ray's pattern for batch inference: a callable class that opens the
model or the server connection once and is reused). Each actor scores a part from its input
file and commits it (client/part_run.py), so order within an output file is the input order
whatever order Ray runs parts in, and the driver only ever sees small per-part results.

Faults: an actor that dies is restarted and its part tried again (Ray Data's defaults for actor
pools: restarts and retries without limit), never skipped; a retried part that its dead
attempt had already committed is not scored twice. Each attempt is noted in the output folder,
so a part that keeps killing its worker (one too large for its memory, say) fails with that
reason after `max_retries` retries instead of looping.
A part whose input cannot be scored comes back as a failed result; any other error stops the
job with the worker's message. Committed parts stay committed either way.

This module imports Ray; nothing else in vaeserve imports it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import ray
import ray.data

from vaeserve.client.backends import Backend, InProcessBackend
from vaeserve.client.dataset_output import DatasetOutput, PartResult
from vaeserve.client.dataset_parts import Part
from vaeserve.client.errors import VaeClientError
from vaeserve.client.part_run import PartSettings, score_part


@dataclass(frozen=True)
class RayPool:
    """Where and how wide the actor pool runs."""

    address: str | None = None  # None: RAY_ADDRESS, a `ray start` cluster here, or new
    workers: int | None = None  # None: the cluster's CPUs / cpus_per_worker
    cpus_per_worker: float = 1.0  # also the onnxruntime threads of in-process actors
    gpus_per_worker: float = 0.0  # in-process actors use the CUDA provider when > 0
    max_retries: int = 3
    progress: bool = True  # Ray Data's progress bars
    start_timeout_s: int = 600  # for the whole pool to start before any part is handed out


def connect(address: str | None, *, progress: bool = True) -> bool:
    """Join the Ray cluster at `address`, else RAY_ADDRESS, else the cluster `ray start`
    started on this machine, else start a local instance sized to this machine ('local'
    always starts one); True when this call started or joined it (the caller shuts it down).
    An already initialised Ray (a user's own program) is used as it is."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address not in ("auto", "local"):
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=progress)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=progress)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise VaeClientError(
            f"cannot connect to the Ray cluster at {address or 'a new local instance'}: {exc}",
            code=grpc.StatusCode.UNAVAILABLE,
        ) from None
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
    return True


def _check_reachable(address: str) -> None:
    """Fail in seconds, with a clear message, where ray.init would wait a long time."""
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise VaeClientError(
            f"cannot reach a Ray cluster at {address} ({exc}); check --ray-address (HOST:PORT "
            "of the head node's GCS, as `ray start --head` prints) and that the cluster is up",
            code=grpc.StatusCode.UNAVAILABLE,
        ) from None


def pool_size(pool: RayPool, parts: int) -> int:
    """Actors to start: as asked, else as many as the cluster's CPUs hold; never more than
    there are parts."""
    if pool.workers:
        return max(1, min(pool.workers, parts))
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, min(parts, int(cpus // pool.cpus_per_worker)))


class PartWorker:
    """One Ray actor: opens the backend once, then scores and commits parts."""

    def __init__(
        self,
        backend: Backend,
        settings: PartSettings,
        threads: int,
        device: str,
        max_retries: int,
    ) -> None:
        self.max_retries = max_retries
        self.client = backend.open(threads, device)
        self.info = self.client.model_info(settings.model)
        self.settings = settings
        self.output = DatasetOutput(settings.output, settings.output_format)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for text in batch["part"]:
            part = Part.from_json(text)
            attempts = self.output.note_attempt(part)
            if attempts > self.max_retries + 1 and self.output.find_committed(part) is None:
                result = PartResult(
                    index=part.index,
                    name=part.name,
                    input=part.path,
                    size=part.size,
                    start=part.start,
                    stop=part.stop,
                )
                result.error = (
                    f"the Ray worker scoring it died {attempts - 1} times (out of memory?); "
                    f"--max-retries is {self.max_retries}"
                )
            else:
                result = score_part(
                    self.client, self.info, part, self.settings, self.output, node=self.node
                )
            results.append(result)
        return {"result": np.array([json.dumps(r.to_dict()) for r in results], dtype=object)}


class RayEngine:
    """The dataset job's engine on Ray: connected when made, `run` per batch of parts."""

    def __init__(self, pool: RayPool) -> None:
        self.pool = pool
        self.started_here = connect(pool.address, progress=pool.progress)

    def run(
        self, parts: list[Part], settings: PartSettings, backend: Backend
    ) -> Iterator[PartResult]:
        """Score and commit the parts on the cluster; yields each part's result as it comes
        (in no fixed order)."""
        if parts:
            yield from run_parts_on_ray(parts, settings, backend, self.pool)

    def close(self) -> None:
        """Shut Ray down when this engine started or joined it."""
        if self.started_here:
            ray.shutdown()
            self.started_here = False


def run_parts_on_ray(
    parts: list[Part], settings: PartSettings, backend: Backend, pool: RayPool
) -> Iterator[PartResult]:
    """Score and commit the parts with a pool of PartWorker actors on the Ray cluster this
    process is connected to; yields each part's result as it comes (in no fixed order)."""
    size = pool_size(pool, len(parts))
    in_process = isinstance(backend, InProcessBackend)
    threads = max(1, int(pool.cpus_per_worker)) if in_process else 0
    device = "cuda" if in_process and pool.gpus_per_worker > 0 else "cpu"
    items = [{"part": p.to_json()} for p in parts]
    context = ray.data.DataContext.get_current()
    # Start the whole pool before handing out parts, so that work is spread from the start,
    # and so that a pool the cluster cannot hold is an error, not a wait forever.
    waited, context.wait_for_min_actors_s = context.wait_for_min_actors_s, pool.start_timeout_s
    try:
        scored = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            PartWorker,
            fn_constructor_kwargs={
                "backend": backend,
                "settings": settings,
                "threads": threads,
                "device": device,
                "max_retries": pool.max_retries,
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
            num_cpus=pool.cpus_per_worker,
            num_gpus=pool.gpus_per_worker or None,
        )
        for row in scored.iter_rows():
            yield PartResult.from_dict(json.loads(row["result"]))
    except VaeClientError:
        raise
    except ray.exceptions.GetTimeoutError:
        raise VaeClientError(
            f"the Ray cluster did not start {size} workers of {pool.cpus_per_worker:g} CPUs "
            f"and {pool.gpus_per_worker:g} GPUs within {pool.start_timeout_s} s; it has "
            f"{_resources()}. Ask for fewer or smaller workers (--workers, --cpus-per-worker, "
            "--gpus-per-worker)",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        ) from None
    except Exception as exc:
        raise worker_error(exc) from None
    finally:
        context.wait_for_min_actors_s = waited


def _resources() -> str:
    total = ray.cluster_resources()
    return ", ".join(f"{total.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


def worker_error(exc: BaseException) -> VaeClientError:
    """The VaeClientError a worker raised, found inside Ray's wrappers; otherwise one that
    says what Ray reported."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, VaeClientError):
            return current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    message = str(exc).strip().splitlines()
    return VaeClientError(
        f"the Ray job failed: {message[-1] if message else type(exc).__name__}; the parts "
        "committed so far are kept (rerun with --resume)",
        code=grpc.StatusCode.ABORTED,
    )
