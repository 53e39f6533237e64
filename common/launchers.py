"""The console scripts' entry points. Every install gets all four scripts, whatever extras it
chose; a script whose extra is missing says in one line what to install instead of dying in a
ModuleNotFoundError traceback."""

from __future__ import annotations

import importlib
import sys
from typing import Any

# script -> (module with main(), the extra it needs, what to run)
SCRIPTS = {
    "vae-train": ("vaeserve.training.cli", "train", "pip install 'vaeserve[train]'"),
    "vae-export": ("vaeserve.export.cli", "train", "pip install 'vaeserve[train]'"),
    "vae-server": (
        "vaeserve.server.cli",
        "serve",
        "pip install 'vaeserve[serve]' (or 'vaeserve[serve-cpu]' on a machine without a GPU)",
    ),
    "vae-client": ("vaeserve.client.cli", "client", "pip install 'vaeserve[client]'"),
}


def launch(script: str) -> Any:
    """Import the script's CLI and run it; exit 1 with one line when a dependency is missing."""
    module, extra, install = SCRIPTS[script]
    try:
        main = importlib.import_module(module).main
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not missing or missing == "vaeserve":  # our own code is broken: show it all
            raise
        print(
            f"{script} needs the {extra} extra (no module named {missing!r}): {install}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    return main()


def vae_train() -> Any:
    """`vae-train` (the train extra)."""
    return launch("vae-train")


def vae_export() -> Any:
    """`vae-export` (the train extra)."""
    return launch("vae-export")


def vae_server() -> Any:
    """`vae-server` (the serve or serve-cpu extra)."""
    return launch("vae-server")


def vae_client() -> Any:
    """`vae-client` (the client extra)."""
    return launch("vae-client")
