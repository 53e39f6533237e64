"""Security material: TLS and mutual TLS credentials, and the accepted bearer tokens.

Tokens come from `tokens` (VAESERVE_TOKENS, comma-separated) and `token_file` (one per line,
`#` comments); a change to the file is picked up within a few seconds. Clients send
`authorization: Bearer <token>` metadata; tokens are compared with hmac.compare_digest against
every accepted token. AuthLayer (server/layers.py) turns away calls without one.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import grpc

from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

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


def check_files(settings: ServerSettings) -> None:
    """Fail early, naming the setting, when a TLS or token file cannot be read."""
    for name in ("tls_cert", "tls_key", "tls_client_ca", "token_file"):
        path = getattr(settings, name)
        if path is not None and not os.access(path, os.R_OK):
            raise SecurityError(f"{name} {path} does not exist or cannot be read")
