"""`vae-server`: serve a model repository over gRPC until SIGTERM or Ctrl-C.

Every ServerSettings field is a flag (--max-batch-rows for max_batch_rows), an environment
variable (VAESERVE_MAX_BATCH_ROWS) and a config-file key; flags win over the environment,
which wins over the file.
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

from vaeserve.server.app import ServerStartError, start_server
from vaeserve.server.repository import LoadError
from vaeserve.server.sessions import DeviceError
from vaeserve.server.settings import (
    ENV_PREFIX,
    ServerSettings,
    SettingsError,
    field_help,
    field_types,
)

log = logging.getLogger("vaeserve.server")


def _settings_options(fn: Any) -> Any:
    """One click option per ServerSettings field; default None so unset flags override nothing."""
    helps = field_help()
    for name, tp in reversed(list(field_types().items())):
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
        else:
            fn = click.option(flag, name, type=tp, default=None, help=help_text)(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML or JSON file of settings (keys as the flags, with _ or -) [env VAESERVE_CONFIG]",
)
@_settings_options
def main(config: Path | None, **flags: Any) -> None:
    """Serve VAE models from a vae-export model repository over gRPC (vae.v1)."""
    try:
        settings = ServerSettings.load(config=config, **flags)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(
        level=getattr(logging, settings.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
    except (DeviceError, ServerStartError, LoadError) as exc:
        click.echo(f"vae-server: error: {exc}", err=True)
        sys.exit(2)
    click.echo(
        f"vae-server listening on {server.address} "
        f"(device {server.device}; providers {', '.join(server.providers) or 'none yet'}); "
        f"models: {server.app.repository.describe()}",
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
