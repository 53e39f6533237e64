"""The server's lifecycle: what lives on its event loop, and how it starts and stops.

ServerApp.start checks the device, binds the port (server/grpc_server.py) while health says
NOT_SERVING, loads and warms every model, then serves; stop gives in-flight calls their grace.
Every call runs inside the built-in layers (server/layers.py), then any extra grpc.aio
`interceptors`; more servicers plug in through `services` hooks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from vaeserve.server.dataplane import DataPlane
from vaeserve.server.errors import ServerStartError
from vaeserve.server.grpc_server import (
    STREAM_METHODS,
    Interceptors,
    ServiceHooks,
    build_server,
    model_services,
)
from vaeserve.server.health import NOT_SERVING, SERVING, ModelHealth
from vaeserve.server.layers import StreamLimitLayer, builtin_layers
from vaeserve.server.metrics import Metrics, MetricsEndpoint
from vaeserve.server.probe_port import ProbePort
from vaeserve.server.repository import ModelRepository, ScanResult
from vaeserve.server.security import SecurityError, check_files, server_credentials
from vaeserve.server.sessions import SessionFactory
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)


class ServerApp:
    """Everything that lives on the server's event loop: grpc server, repository, health."""

    def __init__(
        self, settings: ServerSettings, interceptors: Interceptors = (), services: ServiceHooks = ()
    ) -> None:
        self.settings = settings
        self.interceptors = list(interceptors)
        self.services = list(services)
        self.metrics = Metrics()
        self.factory = SessionFactory(settings)
        self.inference_pool = ThreadPoolExecutor(settings.inference_threads, "vae-infer")
        self.loader_pool = ThreadPoolExecutor(1, "vae-loader")
        self.repository = ModelRepository(
            settings, self.factory, self.inference_pool, observers=self.metrics.batch_observer
        )
        self.dataplane = DataPlane(self.repository, settings, self.metrics, self.is_ready)
        self.health = ModelHealth(model_services(settings))
        self.probe_port = ProbePort(settings, self.health)  # health_port: plaintext, health only
        self.server: grpc.aio.Server | None = None
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.stream_limit = StreamLimitLayer(settings.max_streams, STREAM_METHODS, self.metrics)
        self.port = 0
        self.started = False
        self.stopping = False
        self._poll_task: asyncio.Task | None = None
        self._drift_task: asyncio.Task | None = None

    def is_ready(self) -> bool:
        """True once every model found at start is warm, until shutdown begins."""
        return self.started and not self.stopping

    @property
    def metrics_port(self) -> int:
        """The bound metrics port, 0 when the endpoint is off."""
        return self.metrics_endpoint.port if self.metrics_endpoint else 0

    async def start(self) -> int:
        """Check the device, bind, serve NOT_SERVING, load and warm models, then SERVING."""
        s = self.settings
        if not s.model_repo.is_dir():
            raise ServerStartError(f"model repository {s.model_repo} is not a directory")
        t_start = time.perf_counter()
        try:
            check_files(s)
            credentials = server_credentials(s)
            layers = builtin_layers(s, self.metrics, self.stream_limit)
        except SecurityError as exc:
            raise ServerStartError(str(exc)) from exc
        loop = asyncio.get_running_loop()
        device = await loop.run_in_executor(self.loader_pool, self.factory.resolve_device)
        self.server, self.port = build_server(self, layers, credentials)
        await self.health.set_services(NOT_SERVING)
        if s.metrics_port:
            try:
                self.metrics_endpoint = MetricsEndpoint(
                    self.metrics, s.metrics_host or s.host, s.metrics_port
                )
            except OSError as exc:
                raise ServerStartError(str(exc)) from exc
        await self.server.start()
        try:
            await self.probe_port.start()
            result = await loop.run_in_executor(
                self.loader_pool, functools.partial(self.repository.scan, strict=True)
            )
            await self._apply_scan(result)
        except BaseException:
            await self.server.stop(0)
            await self.probe_port.stop()
            self._stop_metrics()
            raise
        self.started = True
        self.metrics.ready.set(1)
        await self._publish_serving()
        if not self.repository.snapshot():
            log.warning(
                "no model in %s yet; health says NOT_SERVING until one loads (polling for one)",
                s.model_repo,
            )
        self._log_started(device, time.perf_counter() - t_start)
        if s.poll_interval_s > 0:
            self._poll_task = asyncio.create_task(self._poll(), name="repo-poll")
        if s.drift_window_rows > 0:
            self._drift_task = asyncio.create_task(self._evaluate_drift(), name="drift")
        return self.port

    def _log_started(self, device: str, seconds: float) -> None:
        """The model load report (every loaded version's graphs, providers and warm-up
        time), then what is served where."""
        s = self.settings
        models = [m.report() for m in self.repository.loaded()]
        lines = [
            f"  {r['model']} v{r['version']} on {r['device']}: "
            + ", ".join(f"{g} [{', '.join(v['providers'])}]" for g, v in r["graphs"].items())
            + f"; loaded in {r['load_s']:.3f}s (warm-up {r['warmup_s']:.3f}s)"
            + f"; explain {'on' if r['explain'] else 'unavailable'}"
            + f", drift window {r['drift_window_rows'] or 'off'}"
            for r in models
        ]
        providers = self.repository.providers()
        log.info(
            "model load report: %d model version(s), device %s, ready in %.2fs%s",
            len(models),
            device,
            seconds,
            "".join("\n" + line for line in lines),
            extra={
                "fields": {
                    "event": "load_report",
                    "device": device,
                    "providers": providers,
                    "ready_s": round(seconds, 4),
                    "models": models,
                }
            },
        )
        log.info(
            "serving %s on %s:%d (%s%s; device %s, providers %s; metrics %s); models: %s",
            " and ".join(
                ["vae.v1"] + (["KServe v2 (inference.GRPCInferenceService)"] if s.kserve else [])
            ),
            s.host,
            self.port,
            "TLS" if s.tls else "plaintext",
            (" with client certificates" if s.tls_client_ca else "")
            + (", bearer tokens" if s.token_auth else ""),
            device,
            ", ".join(providers) or "none yet",
            f"on :{self.metrics_port}/metrics" if self.metrics_endpoint else "off",
            self.repository.describe(where=True),
        )

    async def rescan(self) -> ScanResult:
        """Scan the repository now and update health (the poller calls this)."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.loader_pool, self.repository.scan)
        await self._apply_scan(result)
        for name, version in result.added:
            log.info("now serving model %s version %d", name, version)
        return result

    async def _apply_scan(self, result: ScanResult) -> None:
        """Publish what a scan changed in health and metrics."""
        models = self.repository.snapshot()
        for name, version in result.added:
            self.metrics.model_loaded(models[name][version])
        for name, version in result.removed:
            self.metrics.model_unloaded(name, version)
        await self.health.apply(result, models)
        if self.is_ready():
            await self._publish_serving()

    async def _publish_serving(self) -> None:
        """The server's and its services' health: SERVING while at least one model is loaded
        (with none, every inference call would answer NOT_FOUND), else NOT_SERVING."""
        await self.health.set_services(SERVING if self.repository.snapshot() else NOT_SERVING)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.rescan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("repository scan failed; will retry")

    async def _evaluate_drift(self) -> None:
        """Every drift_period_s, evaluate the drift windows (on a worker thread) and publish
        their gauges."""
        while True:
            await asyncio.sleep(self.settings.drift_period_s)
            try:
                await self.dataplane.refresh_drift()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("drift evaluation failed; will retry")

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, give in-flight ones `grace` s, release pools."""
        grace = self.settings.grace_s if grace is None else grace
        self.stopping = True
        self.metrics.ready.set(0)
        await self.health.enter_graceful_shutdown()
        for task in (self._poll_task, self._drift_task):
            if task is not None:
                task.cancel()
        if self.server is not None:
            log.info("stopping: in-flight calls get up to %.1fs", grace)
            await self.server.stop(grace)
        await self.probe_port.stop()
        self.release()
        log.info("stopped")

    def release(self) -> None:
        """Shut the thread pools down and free the metrics port (after stop or a failed start)."""
        self.inference_pool.shutdown(wait=False, cancel_futures=True)
        self.loader_pool.shutdown(wait=False, cancel_futures=True)
        self._stop_metrics()

    def _stop_metrics(self) -> None:
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
            self.metrics_endpoint = None
