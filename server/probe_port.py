"""A plaintext listener that serves only grpc.health.v1, for Kubernetes' native gRPC probes.

Kubernetes' gRPC probes cannot speak TLS or present client certificates, so under TLS or
mutual TLS they cannot reach the main port. This second grpc.aio server shares the main
server's HealthServicer, so it reports exactly the same statuses (NOT_SERVING while models
load and while draining), and carries nothing else: no model service, no reflection, no tokens.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)


class ProbePortError(RuntimeError):
    """The health-only port could not be bound (in use, bad address)."""


class ProbePort:
    """The health-only listener on settings.health_port; does nothing when that is 0."""

    def __init__(self, settings: ServerSettings, health: health_aio.HealthServicer) -> None:
        self.settings = settings
        self.health = health
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        """host:port to listen on (health_host, or host when that is empty)."""
        s = self.settings
        host = s.health_host or s.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{s.health_port}"

    async def start(self) -> int:
        """Bind and serve; returns the bound port (0 when the setting is off)."""
        if not self.settings.health_port or self.server is not None:
            return self.port
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise ProbePortError(f"cannot listen on health port {self.address}: {exc}") from exc
        if port == 0:
            raise ProbePortError(f"cannot listen on health port {self.address} (address in use?)")
        await server.start()
        self.server, self.port = server, port
        log.info("grpc.health.v1 only, plaintext, on %s", self.address)
        return port

    async def stop(self) -> None:
        """Stop at once (call after the main server has drained); harmless when not started."""
        if self.server is not None:
            await self.server.stop(0)
            self.server = None
