"""The gRPC channel to a vae.v1 server (TLS, token, message limits, reconnect pacing) and the
retry policy of its calls: UNAVAILABLE is retried with exponential backoff and jitter."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from vaeserve.client.errors import VaeClientError
from vaeserve.client.options import CertSource, ConnectionOptions
from vaeserve.client.tracing import traced_channel

#: Statuses worth another attempt: the server or the network is away for a moment.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]


def open_channel(options: ConnectionOptions) -> grpc.Channel:
    """A lazily connected channel; TLS when `tls` or any certificate is given. Each call sends
    the caller's OpenTelemetry trace context when there is one (client/tracing.py)."""
    if (options.client_cert is None) != (options.client_key is None):
        raise VaeClientError("a client certificate needs its key and the key its certificate")
    max_bytes = options.max_message_bytes
    args: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.primary_user_agent", "vaeserve-client"),
        # Come back quickly after a server restart instead of gRPC's default up-to-120 s.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if options.load_balancing:
        config = {"loadBalancingConfig": [{options.load_balancing: {}}]}
        args.append(("grpc.service_config", json.dumps(config)))
    if options.tls_server_name:
        args.append(("grpc.ssl_target_name_override", options.tls_server_name))
    args.extend(options.options)
    if options.tls or options.tls_ca is not None or options.client_cert is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(options.tls_ca),
            private_key=_read(options.client_key),
            certificate_chain=_read(options.client_cert),
        )
        return traced_channel(grpc.secure_channel(options.target, credentials, options=args))
    return traced_channel(grpc.insecure_channel(options.target, options=args))


def call_metadata(token: str | None) -> Metadata:
    """The metadata sent with every call: the bearer token, if any."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def _read(source: CertSource) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise VaeClientError(f"cannot read {source}: {exc.strerror}") from exc


@dataclass
class RetryPolicy:
    """How often and how patiently a call that failed with UNAVAILABLE is tried again."""

    retries: int = 5
    backoff: float = 0.25
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        self.retries = max(0, int(self.retries))

    def should_retry(self, exc: grpc.RpcError, attempt: int) -> bool:
        """True when `exc` is retryable and attempt (0-based) is not the last one allowed."""
        return exc.code() in RETRYABLE and attempt < self.retries

    def wait(self, attempt: int) -> None:
        """Sleep before retry `attempt` + 1: backoff * 2**attempt, capped, with jitter."""
        delay = min(self.max_backoff, self.backoff * (2**attempt))
        time.sleep(delay * random.uniform(0.5, 1.0))

    def call(
        self,
        method: Callable[..., T],
        request: Any,
        *,
        what: str,
        timeout: float | None,
        metadata: Metadata = (),
    ) -> T:
        """A unary call with a deadline, retried on UNAVAILABLE; VaeClientError when it fails."""
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as exc:
                if self.should_retry(exc, attempt):
                    self.wait(attempt)
                    attempt += 1
                    continue
                raise VaeClientError.from_rpc_error(exc, what) from None
