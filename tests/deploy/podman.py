"""Helpers for the image tests: the container tools (a missing one fails, saying how to get
it), podman with the project's containers.conf, and free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "image" / "containers.conf"
TOOLS = ("podman", "runc", "mmdebstrap")


def require_tools() -> None:
    """Fail (not skip) when a tool the image tests need is missing."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the image tests need podman, runc and mmdebstrap. "
            "Run `bash scripts/image-tools.sh` (as root it installs them from Debian: "
            "apt-get install podman runc mmdebstrap)",
            pytrace=False,
        )


def env() -> dict[str, str]:
    """The environment for podman and the image scripts (runc and ulimits, see containers.conf)."""
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF), **os.environ}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run podman; on failure the assertion shows its stderr."""
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=env()
    )
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr}"
    return result


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
