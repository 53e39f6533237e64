"""grpc.health.v1 statuses: the server ("") and its services as a whole, each model (its newest
version) as NAME and each version as NAME/VERSION."""

from __future__ import annotations

from collections.abc import Container, Iterable

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from vaeserve.server.repository import ScanResult

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_name(name: str, version: int | None = None) -> str:
    """Health service name of a model ("digits", its newest version) or a version ("digits/2")."""
    return name if version is None else f"{name}/{version}"


class ModelHealth(health_aio.HealthServicer):
    """The health servicer, with the server's services and models kept up to date."""

    def __init__(self, service_names: Iterable[str]) -> None:
        super().__init__()
        self.service_names = ["", *service_names]

    async def set_services(self, status: int) -> None:
        """Set the server ("") and every model service to `status`."""
        for name in self.service_names:
            await self.set(name, status)

    async def apply(self, result: ScanResult, loaded: Container[str]) -> None:
        """SERVING for added versions and their models; NOT_SERVING for removed versions, and
        for their model when it is no longer `loaded`."""
        for name, version in result.added:
            await self.set(health_name(name, version), SERVING)
            await self.set(health_name(name), SERVING)
        for name, version in result.removed:
            await self.set(health_name(name, version), NOT_SERVING)
            if name not in loaded:
                await self.set(health_name(name), NOT_SERVING)
