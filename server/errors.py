"""The server's exceptions: RequestError (a gRPC status code and a message saying what to fix)
and ServerStartError, and `echo`, the one way a client's own value goes into a message.

Status messages travel in HTTP/2 trailers, which clients cap (about 8 KiB), so a message that
repeated a 20,000-character name unshortened would reach the client as a transport error
instead of its status: values are echoed shortened, and every message is capped.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

ECHO_CHARS = 64  # most characters of a client's value repeated in a message
MAX_MESSAGE_CHARS = 1024  # most characters of a status message
MAX_SHAPE_DIMS = 6  # most dimensions of a client's shape repeated in a message


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """A client's string (or other value) quoted for a message, shortened past `limit`
    characters: 'abc', or 'abcd…' (20000 characters)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    head = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{head}… ({len(text)} characters)"


def echo_shape(shape: Sequence[int]) -> str:
    """A client's shape for a message: [4, 64], or [1, 1, 1, 1, 1, 1, …] (900 dimensions)."""
    dims = [int(d) for d in shape[: MAX_SHAPE_DIMS + 1]]
    if len(shape) <= MAX_SHAPE_DIMS:
        return str(dims)
    return f"[{', '.join(map(str, dims[:MAX_SHAPE_DIMS]))}, …] ({len(shape)} dimensions)"


def cap_message(message: str) -> str:
    """A status message no longer than MAX_MESSAGE_CHARS."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 14] + "… (shortened)"


class ServerStartError(RuntimeError):
    """The server could not start: port in use, repository missing, device unusable."""


class RequestError(Exception):
    """A request the server rejects; unary RPCs abort with it, the Score stream sends it in-band."""

    def __init__(self, code: grpc.StatusCode, message: str, limit: str = "") -> None:
        message = cap_message(message)
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
