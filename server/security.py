"""Security: TLS and mutual TLS credentials, bearer tokens, and the concurrent-stream limit.

Tokens come from `tokens` (VAESERVE_TOKENS, comma-separated) and `token_file` (one per line,
`#` comments); a change to the file is picked up within a few seconds. Clients send
`authorization: Bearer <token>` metadata; tokens are compared with hmac.compare_digest against
every accepted token. A call without an accepted token is aborted UNAUTHENTICATED and logged
with its peer and the reason, never with what it sent. grpc.health.v1 stays open while
`open_health` is set, so load balancers and Kubernetes probes need no token.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from vaeserve.server.observability import Metrics
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
TOKEN_RECHECK_S = 2.0


class SecurityError(ValueError):
    """TLS files or tokens that cannot be used; the message says which and why."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from tls_cert/tls_key (+ tls_client_ca: client certificates required)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    cert = _read(settings.tls_cert, "tls_cert")
    key = _read(settings.tls_key, "tls_key")
    if b"-----BEGIN" not in cert or b"-----BEGIN" not in key:
        raise SecurityError("tls_cert and tls_key must be PEM files (-----BEGIN ...)")
    ca = None
    if settings.tls_client_ca is not None:
        ca = _read(settings.tls_client_ca, "tls_client_ca")
        if b"-----BEGIN CERTIFICATE" not in ca:
            raise SecurityError(f"tls_client_ca {settings.tls_client_ca} holds no PEM certificate")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def parse_tokens(text: str, comma: bool = False) -> list[bytes]:
    """Tokens from a file's text (one per line, `#` comments) or, with comma, a list a,b,c."""
    out: list[bytes] = []
    if comma:
        parts: Iterable[str] = text.split(",")
    else:
        parts = (line.split("#", 1)[0] for line in text.splitlines())
    for part in parts:
        token = part.strip()
        if token:
            out.append(token.encode())
    return out


class TokenStore:
    """The accepted bearer tokens; re-reads token_file when it changes (checked every 2 s)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.inline = parse_tokens(settings.tokens, comma=True)
        self.path = settings.token_file
        self._file_tokens: list[bytes] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        if self.path is not None:
            self._load(initial=True)
        if not self.tokens():
            raise SecurityError(
                "token auth is on but no token was given: put tokens in token_file "
                f"({self.path}) or VAESERVE_TOKENS"
            )

    def tokens(self) -> list[bytes]:
        """Every accepted token."""
        return self.inline + self._file_tokens

    def _load(self, initial: bool = False) -> None:
        assert self.path is not None
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            tokens = parse_tokens(self.path.read_text())
        except OSError as exc:
            if initial:
                raise SecurityError(f"cannot read token_file {self.path}: {exc}") from None
            log.error("cannot re-read token_file %s (%s); keeping the old tokens", self.path, exc)
            return
        self._stamp, self._file_tokens = stamp, tokens
        if not initial:
            log.info("token_file %s changed: %d tokens now", self.path, len(tokens))

    def accepts(self, given: bytes) -> bool:
        """Constant-time comparison against every token (no early exit on a match)."""
        if self.path is not None and time.monotonic() - self._checked > TOKEN_RECHECK_S:
            self._checked = time.monotonic()
            self._load()
        ok = False
        for token in self.tokens():
            ok |= hmac.compare_digest(token, given)
        return ok


def bearer_token(metadata: Iterable[tuple[str, object]] | None) -> tuple[bytes | None, str]:
    """(token, "") from `authorization: Bearer <token>` metadata, or (None, reason)."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if not values:
        return None, "missing"
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = str(value).strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None, "malformed"
    return token.strip().encode(), ""


def _who(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer()
    try:
        names = context.auth_context().get("x509_common_name") or []
    except Exception:  # pragma: no cover - auth_context is best effort
        names = []
    if names:
        peer += f" (client certificate CN={names[0].decode(errors='replace')})"
    return peer


class AuthLayer:
    """A call layer (server/interception.py) that requires an accepted bearer token."""

    def __init__(self, store: TokenStore, metrics: Metrics, open_health: bool = True) -> None:
        self.store = store
        self.metrics = metrics
        self.open_health = open_health

    @asynccontextmanager
    async def __call__(
        self, method: str, streaming: bool, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        """Pass the call through, or abort it UNAUTHENTICATED."""
        if not (self.open_health and method.startswith(HEALTH_PREFIX)):
            token, reason = bearer_token(context.invocation_metadata())
            if token is not None and not self.store.accepts(token):
                reason = "invalid"
            if reason:
                self.metrics.auth_failures.labels(reason).inc()
                log.warning(
                    "unauthenticated call to %s from %s: %s bearer token",
                    method,
                    _who(context),
                    {"missing": "no", "malformed": "malformed", "invalid": "unknown"}[reason],
                    extra={"fields": {"auth_failure": reason, "method": method}},
                )
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server needs a bearer token: send metadata "
                    "'authorization: Bearer <token>' with a token it accepts",
                )
        yield


class StreamLimitLayer:
    """A call layer that refuses a new stream while `max_streams` are open (0: no limit)."""

    def __init__(self, max_streams: int, methods: Iterable[str], metrics: Metrics) -> None:
        self.max_streams = max_streams
        self.methods = set(methods)
        self.metrics = metrics
        self.open = 0

    @asynccontextmanager
    async def __call__(
        self, method: str, streaming: bool, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        """Count the stream while it is open, or abort it RESOURCE_EXHAUSTED."""
        if method not in self.methods:
            yield
            return
        if self.max_streams and self.open >= self.max_streams:
            self.metrics.limit_rejections.labels("max_streams").inc()
            log.warning("refused a %s stream: %d streams open (max_streams)", method, self.open)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many streams: {self.open} are open and this server allows "
                f"{self.max_streams} at once (setting max_streams); close one or retry later",
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


def check_files(settings: ServerSettings) -> None:
    """Fail early, naming the setting, when a TLS or token file cannot be read."""
    for name in ("tls_cert", "tls_key", "tls_client_ca", "token_file"):
        path = getattr(settings, name)
        if path is not None and not os.access(path, os.R_OK):
            raise SecurityError(f"{name} {path} does not exist or cannot be read")
