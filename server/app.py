"""Wiring: the grpc.aio server with VaeService, KServe v2, health, reflection; start; stop.

`start_server(settings)` runs a ServerApp on its own asyncio loop in a background thread and
returns a VaeServer handle once the port is bound and every model is warm. Every call runs
inside the built-in layers (request id, metrics and access log; bearer tokens; the stream
limit), then any extra grpc.aio `interceptors`. More servicers plug in through `services` hooks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from vaeserve.proto.inference import grpc_service_pb2_grpc
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server import kserve
from vaeserve.server.interception import Layer, LayeredInterceptor
from vaeserve.server.observability import Metrics, MetricsEndpoint, ObservabilityInterceptor
from vaeserve.server.ops import ModelOps
from vaeserve.server.probe_port import ProbePort
from vaeserve.server.repository import ModelRepository, ScanResult
from vaeserve.server.security import (
    AuthLayer,
    SecurityError,
    StreamLimitLayer,
    TokenStore,
    check_files,
    server_credentials,
)
from vaeserve.server.servicer import VaeServicer
from vaeserve.server.sessions import SessionFactory
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

VAE_SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name
KSERVE_SERVICE = kserve.SERVICE
# Request-streaming RPCs the max_streams limit applies to.
STREAM_METHODS = (f"/{VAE_SERVICE}/Score", kserve.STREAM_METHOD)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# A hook that adds servicers to the server and returns their full service names (for
# reflection). It gets the ServerApp, whose `repository` holds the loaded models.
ServiceHook = Callable[[grpc.aio.Server, "ServerApp"], Iterable[str]]


class ServerStartError(RuntimeError):
    """The server could not start: port in use, repository missing, device unusable."""


def health_name(name: str, version: int | None = None) -> str:
    """Health service name of a model ("digits", its newest version) or a version ("digits/2")."""
    return name if version is None else f"{name}/{version}"


def grpc_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    """Channel options: message size limits and no port sharing (a busy port is an error)."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


class ServerApp:
    """Everything that lives on the server's event loop: grpc server, repository, health."""

    def __init__(
        self,
        settings: ServerSettings,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        services: Sequence[ServiceHook] = (),
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
        self.ops = ModelOps(self.repository, settings, self.metrics)
        self.health = health_aio.HealthServicer()
        self.probe_port = ProbePort(settings, self.health)  # health_port: plaintext, health only
        self.server: grpc.aio.Server | None = None
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.stream_limit = StreamLimitLayer(settings.max_streams, STREAM_METHODS, self.metrics)
        self.port = 0
        self.started = False
        self.stopping = False
        self._poll_task: asyncio.Task | None = None

    def _layers(self) -> list[Layer]:
        """The built-in call layers, outermost first (raises SecurityError on bad tokens)."""
        s = self.settings
        layers: list[Layer] = [ObservabilityInterceptor(self.metrics, s.access_log)]
        if s.token_auth:
            layers.append(AuthLayer(TokenStore(s), self.metrics, open_health=s.open_health))
        layers.append(self.stream_limit)
        return layers

    @property
    def service_names(self) -> list[str]:
        """The model services this server offers (for health)."""
        return [VAE_SERVICE] + ([KSERVE_SERVICE] if self.settings.kserve else [])

    def is_ready(self) -> bool:
        """True once every model found at start is warm, until shutdown begins."""
        return self.started and not self.stopping

    async def start(self) -> int:
        """Check the device, bind, serve NOT_SERVING, load and warm models, then SERVING."""
        s = self.settings
        if not s.model_repo.is_dir():
            raise ServerStartError(f"model repository {s.model_repo} is not a directory")
        t_start = time.perf_counter()
        try:
            check_files(s)
            credentials = server_credentials(s)
            layers = self._layers()
        except SecurityError as exc:
            raise ServerStartError(str(exc)) from exc
        loop = asyncio.get_running_loop()
        device = await loop.run_in_executor(self.loader_pool, self.factory.resolve_device)
        server = grpc.aio.server(
            interceptors=[LayeredInterceptor(layers), *self.interceptors],
            options=grpc_options(s),
        )
        vae_pb2_grpc.add_VaeServiceServicer_to_server(
            VaeServicer(self.repository, s, self.is_ready, self.ops), server
        )
        names = [VAE_SERVICE]
        if s.kserve:
            grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                kserve.KServeServicer(self.ops, s, self.is_ready), server
            )
            names.append(KSERVE_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names.append(HEALTH_SERVICE)
        for hook in self.services:
            names.extend(hook(server, self))
        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        try:
            if credentials is not None:
                port = server.add_secure_port(s.address, credentials)
            else:
                port = server.add_insecure_port(s.address)
        except RuntimeError as exc:
            raise ServerStartError(f"cannot listen on {s.address}: {exc}") from exc
        if port == 0:
            raise ServerStartError(f"cannot listen on {s.address} (address in use?)")
        self.server, self.port = server, port
        for name in ("", *self.service_names):
            await self.health.set(name, NOT_SERVING)
        if s.metrics_port:
            try:
                self.metrics_endpoint = MetricsEndpoint(
                    self.metrics, s.metrics_host or s.host, s.metrics_port
                )
            except OSError as exc:
                raise ServerStartError(str(exc)) from exc
        await server.start()
        try:
            await self.probe_port.start()
            result = await loop.run_in_executor(
                self.loader_pool, functools.partial(self.repository.scan, strict=True)
            )
            await self._apply_health(result)
        except BaseException:
            await server.stop(0)
            await self.probe_port.stop()
            self._stop_metrics()
            raise
        self.started = True
        self.metrics.ready.set(1)
        for name in ("", *self.service_names):
            await self.health.set(name, SERVING)
        if not self.repository.snapshot():
            log.warning("no model in %s yet; serving anyway and polling for one", s.model_repo)
        self._log_report(device, time.perf_counter() - t_start)
        log.info(
            "serving %s on %s:%d (%s%s; device %s, providers %s; metrics %s); models: %s",
            " and ".join(
                ["vae.v1"] + (["KServe v2 (inference.GRPCInferenceService)"] if s.kserve else [])
            ),
            s.host,
            port,
            "TLS" if s.tls else "plaintext",
            (" with client certificates" if s.tls_client_ca else "")
            + (", bearer tokens" if s.token_auth else ""),
            device,
            ", ".join(self.providers()) or "none yet",
            f"on :{self.metrics_port}/metrics" if self.metrics_endpoint else "off",
            self.repository.describe(),
        )
        if s.poll_interval_s > 0:
            self._poll_task = asyncio.create_task(self._poll(), name="repo-poll")
        return port

    @property
    def metrics_port(self) -> int:
        """The bound metrics port, 0 when the endpoint is off."""
        return self.metrics_endpoint.port if self.metrics_endpoint else 0

    def _stop_metrics(self) -> None:
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
            self.metrics_endpoint = None

    def _log_report(self, device: str, seconds: float) -> None:
        """The model load report: every loaded version's graphs, providers and warm-up time."""
        models = [
            m.report()
            for _, versions in sorted(self.repository.snapshot().items())
            for _, m in sorted(versions.items())
        ]
        lines = [
            f"  {r['model']} v{r['version']} on {r['device']}: "
            + ", ".join(f"{g} [{', '.join(v['providers'])}]" for g, v in r["graphs"].items())
            + f"; loaded in {r['load_s']:.3f}s (warm-up {r['warmup_s']:.3f}s)"
            for r in models
        ]
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
                    "providers": self.providers(),
                    "ready_s": round(seconds, 4),
                    "models": models,
                }
            },
        )

    def providers(self) -> list[str]:
        """Execution providers in use across every loaded session."""
        out: list[str] = []
        for versions in self.repository.snapshot().values():
            for m in versions.values():
                out.extend(p for p in m.providers if p not in out)
        return out

    async def rescan(self) -> ScanResult:
        """Scan the repository now and update health (the poller calls this)."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.loader_pool, self.repository.scan)
        await self._apply_health(result)
        for name, version in result.added:
            log.info("now serving model %s version %d", name, version)
        return result

    async def _apply_health(self, result: ScanResult) -> None:
        models = self.repository.snapshot()
        for name, version in result.added:
            await self.health.set(health_name(name, version), SERVING)
            await self.health.set(health_name(name), SERVING)
            self.metrics.model_loaded(models[name][version])
        for name, version in result.removed:
            self.metrics.model_unloaded(name, version)
            await self.health.set(health_name(name, version), NOT_SERVING)
            if name not in models:
                await self.health.set(health_name(name), NOT_SERVING)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.rescan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("repository scan failed; will retry")

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, give in-flight ones `grace` s, release pools."""
        grace = self.settings.grace_s if grace is None else grace
        self.stopping = True
        self.metrics.ready.set(0)
        await self.health.enter_graceful_shutdown()
        if self._poll_task is not None:
            self._poll_task.cancel()
        if self.server is not None:
            log.info("stopping: in-flight calls get up to %.1fs", grace)
            await self.server.stop(grace)
        await self.probe_port.stop()
        self.inference_pool.shutdown(wait=False, cancel_futures=True)
        self.loader_pool.shutdown(wait=False, cancel_futures=True)
        self._stop_metrics()
        log.info("stopped")


class VaeServer:
    """Handle on a server running in a background thread (what start_server returns)."""

    def __init__(
        self,
        settings: ServerSettings,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        services: Sequence[ServiceHook] = (),
    ) -> None:
        self.settings = settings
        self.app = ServerApp(settings, interceptors, services)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._grace: float | None = None
        self._started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vae-server", daemon=True)

    @property
    def address(self) -> str:
        """host:port with the bound port."""
        return self.settings.replace(port=self.port).address

    @property
    def device(self) -> str:
        """ "cuda" or "cpu"."""
        return self.app.factory.device

    @property
    def providers(self) -> list[str]:
        """Execution providers in use across loaded models."""
        return self.app.providers()

    @property
    def metrics_port(self) -> int:
        """The port of the /metrics endpoint; 0 when it is off."""
        return self.app.metrics_port

    @property
    def metrics(self) -> Metrics:
        """The server's Prometheus metrics (render() gives the page)."""
        return self.app.metrics

    def _start(self) -> VaeServer:
        self._thread.start()
        self.port = self._started.result()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self._stopped.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            port = await self.app.start()
        except BaseException as exc:
            self.app.inference_pool.shutdown(wait=False)
            self.app.loader_pool.shutdown(wait=False)
            self.app._stop_metrics()
            self._started.set_exception(exc)
            return
        self._started.set_result(port)
        await self._stop_event.wait()
        await self.app.stop(self._grace)

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def rescan(self) -> ScanResult:
        """Scan the model repository now instead of waiting for the next poll."""
        return self._call(self.app.rescan())

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: health NOT_SERVING, new calls refused, in-flight ones get `grace` s.

        Blocks until the server thread is done; calling it again is harmless.
        """
        if self._loop is not None and not self._stopped.is_set():
            self._grace = grace

            def request_stop() -> None:
                assert self._stop_event is not None
                self._stop_event.set()

            with contextlib.suppress(RuntimeError):  # RuntimeError: the loop already closed
                self._loop.call_soon_threadsafe(request_stop)
        if self._thread.is_alive():
            self._thread.join()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; False on timeout."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> VaeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    settings: ServerSettings,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    services: Sequence[ServiceHook] = (),
) -> VaeServer:
    """Start serving in a background thread; returns once bound and every model is warm.

    Raises ServerStartError, DeviceError (device="cuda" without working CUDA) or LoadError.
    """
    return VaeServer(settings, interceptors, services)._start()
