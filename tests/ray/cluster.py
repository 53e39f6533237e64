"""A real two-node Ray cluster on this machine for the tests: `ray start --head` and a second
`ray start --address ...` with its own resources, both on loopback with their own temp dirs
and Ray's token authentication with a token of their own, as a multi-machine cluster is
started (every process that joins needs `auth_env`). Stopping it ends exactly the processes
it started (their process groups and the workers their raylets spawned), never anyone else's
Ray."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayCluster:
    """The cluster's GCS address, the authentication environment its processes share, and
    what it takes to stop it."""

    address: str = ""
    auth_env: dict[str, str] = field(
        default_factory=lambda: {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    )
    groups: list[int] = field(default_factory=list)  # process groups of the `ray start`s
    temp_dirs: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start_node(self, *args: str) -> None:
        """One `ray start ...` in its own process group, waited for."""
        temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short: Ray's socket paths are long
        self.temp_dirs.append(temp)
        log = Path(temp) / "ray-start.log"
        self.logs.append(log)
        command = [
            RAY,
            "start",
            *args,
            f"--temp-dir={temp}",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]
        with open(log, "w") as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )
        self.groups.append(proc.pid)
        if proc.wait(timeout=180) != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")

    def env(self) -> dict[str, str]:
        """The environment for the cluster's processes: its token, no RAY_ADDRESS from
        outside, no usage stats."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(self.auth_env, RAY_USAGE_STATS_ENABLED="0")
        return env

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, to every process of the cluster's process groups and their
        descendants."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            pids = self.processes()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.processes():
                time.sleep(0.2)
        for temp in self.temp_dirs:
            subprocess.run(["rm", "-rf", temp], check=False)

    def processes(self) -> set[int]:
        """Live processes that belong to this cluster."""
        table = _process_table()
        ours = {pid for pid, (_, pgid, _) in table.items() if pgid in self.groups}
        grew = True
        while grew:
            children = {pid for pid, (ppid, _, _) in table.items() if ppid in ours} - ours
            ours |= children
            grew = bool(children)
        ours.discard(os.getpid())
        return {pid for pid in ours if table[pid][2] != "Z"}


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, state) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry)] = (int(fields[1]), int(fields[2]), fields[0])
    return out


def start_two_node_cluster() -> RayCluster:
    """A head node with 1 CPU and a second node with 1 CPU and resource `node2`."""
    cluster = RayCluster()
    port = free_port()
    try:
        cluster.start_node(
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            "--object-store-memory=300000000",
        )
        cluster.address = f"127.0.0.1:{port}"
        cluster.start_node(
            f"--address={cluster.address}",
            "--num-cpus=1",
            '--resources={"node2": 1}',
            "--object-store-memory=300000000",
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster
