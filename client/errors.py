"""The one exception type the client raises: a gRPC status code plus the server's message."""

from __future__ import annotations

import grpc


class VaeClientError(Exception):
    """A failed call, rejected batch or unusable input; `code` is a grpc.StatusCode or None.

    `code` is None for problems found on the client side before anything was sent (a bad file,
    an unknown column); otherwise it is the status the server (or the gRPC runtime) returned and
    `details` is the server's message verbatim.
    """

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, details: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details or message

    def __reduce__(self) -> tuple:
        # Keep code and details when pickled (errors raised in Ray workers travel this way).
        return (type(self), (self.message, self.code, self.details), self.__dict__)

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. 'UNAVAILABLE', or 'CLIENT' for client-side errors."""
        return self.code.name if self.code is not None else "CLIENT"

    def __str__(self) -> str:
        return self.message if self.code is None else f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError, what: str = "") -> VaeClientError:
        """Wrap a grpc.RpcError, keeping its status code and the server's details."""
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
        message = f"{what}: {details}" if what else details
        return cls(message, code=code, details=details)

    @classmethod
    def from_status(cls, code: int, message: str, what: str = "") -> VaeClientError:
        """Build from an in-stream Error message (an integer grpc status code and text)."""
        status = _STATUS_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
        text = f"{what}: {message}" if what else message
        return cls(text, code=status, details=message)


_STATUS_BY_VALUE = {s.value[0]: s for s in grpc.StatusCode}
