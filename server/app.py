"""Wiring: the grpc.aio server with VaeService, health, reflection; start in a thread; stop.

`start_server(settings)` runs a ServerApp on its own asyncio loop in a background thread and
returns a VaeServer handle once the port is bound and every model is warm. More servicers
(e.g. KServe v2) plug in through `services` hooks and cross-cutting concerns (auth, metrics)
through grpc.aio `interceptors`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server.repository import ModelRepository, ScanResult
from vaeserve.server.servicer import VaeServicer
from vaeserve.server.sessions import SessionFactory
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

VAE_SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name
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
        self.factory = SessionFactory(settings)
        self.inference_pool = ThreadPoolExecutor(settings.inference_threads, "vae-infer")
        self.loader_pool = ThreadPoolExecutor(1, "vae-loader")
        self.repository = ModelRepository(settings, self.factory, self.inference_pool)
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.started = False
        self.stopping = False
        self._poll_task: asyncio.Task | None = None

    def is_ready(self) -> bool:
        """True once every model found at start is warm, until shutdown begins."""
        return self.started and not self.stopping

    async def start(self) -> int:
        """Check the device, bind, serve NOT_SERVING, load and warm models, then SERVING."""
        s = self.settings
        if not s.model_repo.is_dir():
            raise ServerStartError(f"model repository {s.model_repo} is not a directory")
        loop = asyncio.get_running_loop()
        device = await loop.run_in_executor(self.loader_pool, self.factory.resolve_device)
        server = grpc.aio.server(interceptors=self.interceptors, options=grpc_options(s))
        vae_pb2_grpc.add_VaeServiceServicer_to_server(
            VaeServicer(self.repository, s, self.is_ready), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [VAE_SERVICE, HEALTH_SERVICE]
        for hook in self.services:
            names.extend(hook(server, self))
        names.append(reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        try:
            port = server.add_insecure_port(s.address)
        except RuntimeError as exc:
            raise ServerStartError(f"cannot listen on {s.address}: {exc}") from exc
        if port == 0:
            raise ServerStartError(f"cannot listen on {s.address} (address in use?)")
        self.server, self.port = server, port
        for name in ("", VAE_SERVICE):
            await self.health.set(name, NOT_SERVING)
        await server.start()
        try:
            result = await loop.run_in_executor(
                self.loader_pool, functools.partial(self.repository.scan, strict=True)
            )
            await self._apply_health(result)
        except BaseException:
            await server.stop(0)
            raise
        self.started = True
        for name in ("", VAE_SERVICE):
            await self.health.set(name, SERVING)
        if not self.repository.snapshot():
            log.warning("no model in %s yet; serving anyway and polling for one", s.model_repo)
        log.info(
            "vae.v1 serving on %s:%d (device %s, providers %s); models: %s",
            s.host,
            port,
            device,
            ", ".join(self.providers()) or "none yet",
            self.repository.describe(),
        )
        if s.poll_interval_s > 0:
            self._poll_task = asyncio.create_task(self._poll(), name="repo-poll")
        return port

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
        for name, version in result.removed:
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
        await self.health.enter_graceful_shutdown()
        if self._poll_task is not None:
            self._poll_task.cancel()
        if self.server is not None:
            log.info("stopping: in-flight calls get up to %.1fs", grace)
            await self.server.stop(grace)
        self.inference_pool.shutdown(wait=False, cancel_futures=True)
        self.loader_pool.shutdown(wait=False, cancel_futures=True)
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
