"""ConnectionOptions: how to reach a vae.v1 server, written once for VaeClient and the CLI.

`VaeClient(target, **fields)` and `VaeClient.from_options(...)` take these fields; `vae-client`
builds its connection options (--server, --tls-ca, ...) from the fields that carry a `Flag`, so a
name, default or help text changes in one place only. This module does not import click.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vaeserve.client.arrays import DEFAULT_REQUEST_BYTES, DEFAULT_REQUEST_ROWS

#: Environment variables of `vae-client` start with this (VAECLIENT_SERVER, ...).
ENV_PREFIX = "VAECLIENT"
DEFAULT_SERVER = "localhost:50051"
CertSource = str | Path | bytes | None


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line; the CLI turns it into a click option."""

    help: str
    name: str = ""  # the option's name without dashes when it differs from the field's
    existing_file: bool = False
    minimum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()


def _flag(help: str, **how: Any) -> dict[str, Flag]:
    """Field metadata that puts the field on the command line."""
    return {"flag": Flag(help, **how)}


@dataclass(frozen=True)
class ConnectionOptions:
    """The channel (TLS, token, message size, load balancing), call deadlines and retries."""

    target: str = field(
        default=DEFAULT_SERVER,
        metadata=_flag(
            "HOST:PORT of the server, or dns:///host:port for every address of a name.",
            name="server",
        ),
    )
    tls: bool = field(
        default=False,
        metadata=_flag("Use TLS with the system's root certificates (implied by --tls-ca)."),
    )
    tls_ca: CertSource = field(
        default=None,
        metadata=_flag(
            "PEM file of the CA that signed the server's certificate (turns TLS on).",
            existing_file=True,
        ),
    )
    client_cert: CertSource = field(
        default=None,
        metadata=_flag(
            "PEM client certificate for mutual TLS (with --client-key).", existing_file=True
        ),
    )
    client_key: CertSource = field(
        default=None,
        repr=False,  # may be the key itself
        metadata=_flag("PEM private key of --client-cert.", existing_file=True),
    )
    tls_server_name: str | None = field(
        default=None,
        metadata=_flag(
            "Name to check the server's certificate against, when it differs from HOST."
        ),
    )
    token: str | None = field(
        default=None,
        repr=False,
        metadata=_flag("Bearer token sent as 'authorization: Bearer TOKEN'."),
    )
    timeout: float | None = field(
        default=30.0,
        metadata=_flag(
            "Deadline in seconds of each call (a score stream has none).",
            minimum=0,
            exclusive_minimum=True,
        ),
    )
    retries: int = field(
        default=5,
        metadata=_flag(
            "Attempts after the first when the server is UNAVAILABLE (with backoff).", minimum=0
        ),
    )
    backoff: float = 0.25  # seconds before the first retry; doubled each time
    max_backoff: float = 5.0
    max_message_mb: float = field(
        default=64.0, metadata=_flag("Largest gRPC message sent or received.", minimum=1)
    )
    request_bytes: int = DEFAULT_REQUEST_BYTES
    max_request_rows: int = DEFAULT_REQUEST_ROWS
    load_balancing: str | None = field(
        default=None,
        metadata=_flag(
            "gRPC load-balancing policy over the addresses the target resolves to.",
            choices=("pick_first", "round_robin"),
        ),
    )
    options: Sequence[tuple[str, Any]] = ()  # more gRPC channel arguments

    @property
    def max_message_bytes(self) -> int:
        """max_message_mb in bytes."""
        return int(self.max_message_mb * (1 << 20))

    @classmethod
    def flags(cls) -> list[tuple[str, str, Flag]]:
        """(field name, option name, Flag) of every field the command line sets, in order."""
        return [
            (f.name, f.metadata["flag"].name or f.name, f.metadata["flag"])
            for f in fields(cls)
            if "flag" in f.metadata
        ]
