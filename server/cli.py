"""`vae-server`: serve a model repository over gRPC until SIGTERM or Ctrl-C.

Every ServerSettings field is a flag (--max-batch-rows for max_batch_rows), an environment
variable (VAESERVE_MAX_BATCH_ROWS) and a config-file key; flags win over the environment,
which wins over the file. Secrets (tokens) have no flag. `--print-config` prints the effective
settings, secrets redacted, and exits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import typing
from pathlib import Path
from typing import Any, Literal

import click

from vaeserve.server.background import start_server
from vaeserve.server.errors import ServerStartError
from vaeserve.server.logs import configure_logging
from vaeserve.server.probe_port import ProbePortError
from vaeserve.server.repository import LoadError
from vaeserve.server.sessions import DeviceError
from vaeserve.server.settings import (
    ENV_PREFIX,
    SECRETS,
    ServerSettings,
    SettingsError,
    field_help,
    field_types,
    optional_inner,
)

log = logging.getLogger("vaeserve.server")


def _settings_options(fn: Any) -> Any:
    """One click option per ServerSettings field; default None so unset flags override nothing."""
    helps = field_help()
    for name, tp in reversed(list(field_types().items())):
        if name in SECRETS:  # environment or config file only: never on a command line
            continue
        tp = optional_inner(tp) or tp
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        help_text = f"{helps[name]} [env {env}]"
        if tp is bool:
            fn = click.option(
                f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text
            )(fn)
        elif typing.get_origin(tp) is Literal:
            choice = click.Choice([str(c) for c in typing.get_args(tp)], case_sensitive=False)
            fn = click.option(flag, name, type=choice, default=None, help=help_text)(fn)
        elif tp is Path:
            fn = click.option(
                flag, name, type=click.Path(path_type=Path), default=None, help=help_text
            )(fn)
        elif tp is str:
            fn = click.option(flag, name, type=str, default=None, help=help_text)(fn)
        else:
            fn = click.option(flag, name, type=tp, default=None, help=help_text)(fn)
    return fn


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Bearer tokens can also come from VAESERVE_TOKENS (comma-separated; no flag, so they "
    "never show in a process list).",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML or JSON file of settings (keys as the flags, with _ or -) [env VAESERVE_CONFIG]",
)
@click.option(
    "--print-config",
    is_flag=True,
    help="print the effective settings (secrets redacted) with where each came from, and exit",
)
@_settings_options
def main(config: Path | None, print_config: bool, **flags: Any) -> None:
    """Serve VAE models from a vae-export model repository over gRPC (vae.v1 and KServe v2)."""
    sources: dict[str, str] = {}
    try:
        settings = ServerSettings.load(config=config, sources=sources, **flags)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    if print_config:
        click.echo(settings.to_toml(sources), nl=False)
        return
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second signal: do not wait for the grace period
            log.warning("second signal %d: exiting now", signum)
            os._exit(1)
        signals.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = start_server(settings)
    except (DeviceError, ServerStartError, LoadError, ProbePortError) as exc:
        click.echo(f"vae-server: error: {exc}", err=True)
        sys.exit(2)
    metrics = f"; metrics on :{server.metrics_port}/metrics" if server.metrics_port else ""
    click.echo(
        f"vae-server listening on {server.address} "
        f"(device {server.device}; providers {', '.join(server.providers) or 'none yet'}"
        f"{metrics}); models: {server.app.repository.describe(where=True)}",
    )
    sys.stdout.flush()
    while not stop.wait(0.5):
        if server.wait(0):  # the server thread ended on its own
            sys.exit(1)
    log.info(
        "signal %s: stopping gracefully (grace %.1fs)",
        signal.Signals(signals[0]).name if signals else "?",
        settings.grace_s,
    )
    server.stop(settings.grace_s)
    click.echo("vae-server stopped")


if __name__ == "__main__":  # pragma: no cover
    main()
