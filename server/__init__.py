"""vaeserve.server: the gRPC server (vae.v1) on onnxruntime; never imports torch.

from vaeserve.server import ServerSettings, start_server
server = start_server(ServerSettings(model_repo=path, host="127.0.0.1", port=0))
server.port; server.stop(grace=5.0)
"""

from vaeserve.server.app import ServerApp
from vaeserve.server.background import VaeServer, start_server
from vaeserve.server.errors import ServerStartError
from vaeserve.server.repository import LoadError
from vaeserve.server.sessions import DeviceError
from vaeserve.server.settings import ServerSettings, SettingsError

__all__ = [
    "DeviceError",
    "LoadError",
    "ServerApp",
    "ServerSettings",
    "ServerStartError",
    "SettingsError",
    "VaeServer",
    "start_server",
]
