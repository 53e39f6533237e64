"""A server on its own asyncio loop in a background thread: `start_server` and its handle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from typing import Any

from vaeserve.server.app import ServerApp
from vaeserve.server.grpc_server import Interceptors, ServiceHooks
from vaeserve.server.metrics import Metrics
from vaeserve.server.repository import ScanResult
from vaeserve.server.settings import ServerSettings


class VaeServer:
    """Handle on a server running in a background thread (what start_server returns)."""

    def __init__(
        self, settings: ServerSettings, interceptors: Interceptors = (), services: ServiceHooks = ()
    ) -> None:
        self.app = ServerApp(settings, interceptors, services)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._grace: float | None = None
        self._started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vae-server", daemon=True)

    @property
    def settings(self) -> ServerSettings:
        """The server's settings."""
        return self.app.settings

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
        return self.app.repository.providers()

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
            self.app.release()
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
    interceptors: Interceptors = (),
    services: ServiceHooks = (),
) -> VaeServer:
    """Start serving in a background thread; returns once bound and every model is warm.

    Raises ServerStartError, DeviceError (device="cuda" without working CUDA) or LoadError.
    """
    return VaeServer(settings, interceptors, services)._start()
