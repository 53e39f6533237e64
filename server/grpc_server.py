"""The grpc.aio server of a ServerApp: call layers and interceptors, the vae.v1 and KServe v2
servicers, health, extra services from hooks, reflection, and the bound port."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vaeserve.proto.inference import grpc_service_pb2_grpc
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc
from vaeserve.server import kserve
from vaeserve.server.errors import ServerStartError
from vaeserve.server.interception import Layer, LayeredInterceptor
from vaeserve.server.messages import MessageGuard, receive_cap
from vaeserve.server.servicer import VaeServicer
from vaeserve.server.settings import ServerSettings

if TYPE_CHECKING:
    from vaeserve.server.app import ServerApp

VAE_SERVICE = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name
KSERVE_SERVICE = kserve.SERVICE
# Request-streaming RPCs the max_streams limit applies to.
STREAM_METHODS = (f"/{VAE_SERVICE}/Score", kserve.STREAM_METHOD)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# A hook that adds servicers to the server and returns their full service names (for
# reflection). It gets the ServerApp, whose `repository` holds the loaded models.
ServiceHook = Callable[[grpc.aio.Server, "ServerApp"], Iterable[str]]
# The extension points of a server: grpc.aio interceptors (run inside the built-in layers)
# and service hooks.
Interceptors = Sequence[grpc.aio.ServerInterceptor]
ServiceHooks = Sequence[ServiceHook]


def model_services(settings: ServerSettings) -> list[str]:
    """The model services a server with these settings offers (for health)."""
    return [VAE_SERVICE] + ([KSERVE_SERVICE] if settings.kserve else [])


def grpc_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    """Channel options: message size limits and no port sharing (a busy port is an error).

    grpc's receive limit is above max_message_bytes so that the MessageGuard sees (and names
    the setting for) requests over the setting up to that cap; see server/messages.py.
    """
    return [
        ("grpc.max_receive_message_length", receive_cap(settings.max_message_bytes)),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


def build_server(
    app: ServerApp, layers: Sequence[Layer], credentials: grpc.ServerCredentials | None
) -> tuple[grpc.aio.Server, int]:
    """The app's grpc.aio server with every service added, bound to its address (not started).

    Raises ServerStartError when the address cannot be bound.
    """
    s = app.settings
    server = grpc.aio.server(
        interceptors=[
            LayeredInterceptor(layers, MessageGuard(s.max_message_bytes, app.metrics)),
            *app.interceptors,
        ],
        options=grpc_options(s),
    )
    vae_pb2_grpc.add_VaeServiceServicer_to_server(VaeServicer(app.dataplane), server)
    if s.kserve:
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            kserve.KServeServicer(app.dataplane), server
        )
    health_pb2_grpc.add_HealthServicer_to_server(app.health, server)
    names = [*model_services(s), HEALTH_SERVICE]
    for hook in app.services:
        names.extend(hook(server, app))
    names.append(reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    return server, _bind(server, s.address, credentials)


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ServerStartError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise ServerStartError(f"cannot listen on {address} (address in use?)")
    return port
