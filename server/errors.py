"""The server's exceptions: RequestError (a gRPC status code and a message saying what to fix)
and ServerStartError."""

from __future__ import annotations

import grpc


class ServerStartError(RuntimeError):
    """The server could not start: port in use, repository missing, device unusable."""


class RequestError(Exception):
    """A request the server rejects; unary RPCs abort with it, the Score stream sends it in-band."""

    def __init__(self, code: grpc.StatusCode, message: str, limit: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.limit = limit

    @classmethod
    def invalid(cls, message: str) -> RequestError:
        """INVALID_ARGUMENT: the request itself is wrong."""
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message)

    @classmethod
    def not_found(cls, message: str) -> RequestError:
        """NOT_FOUND: an unknown model or version."""
        return cls(grpc.StatusCode.NOT_FOUND, message)

    @classmethod
    def too_large(cls, message: str, limit: str = "") -> RequestError:
        """RESOURCE_EXHAUSTED: over a configured limit (`limit`: the setting's name)."""
        return cls(grpc.StatusCode.RESOURCE_EXHAUSTED, message, limit)
