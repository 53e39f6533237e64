"""A `vae-server` subprocess for the hardening benchmarks (worst_request, fuzz): started from
this checkout or from an older commit of it, with its memory read from /proc/PID/status.

An older commit runs from `git archive REV server common proto` unpacked as a `vaeserve`
package on PYTHONPATH (ahead of the editable install), so "before" and "after" can be measured
side by side in one run on the same interpreter and packages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def status_kib(pid: int, key: str) -> int | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def mb(kib: int | None) -> float | None:
    """kB as MB (1 decimal), None stays None."""
    return None if kib is None else round(kib / 1024, 1)


def unpack_revision(rev: str, into: Path) -> Path:
    """The server, common and proto folders of commit `rev` as INTO/vaeserve/...; returns INTO
    (the folder to put on PYTHONPATH)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "src.tar"
    with open(archive, "wb") as f:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--prefix=vaeserve/", rev, "server", "common",
             "proto"],
            check=True,
            stdout=f,
        )  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    (into / "vaeserve" / "__init__.py").write_text("")
    archive.unlink()
    return into


class ServerProcess:
    """`python -m vaeserve.server.cli` on a free loopback port; `pythonpath` runs other code."""

    def __init__(
        self,
        repo: Path,
        *args: str,
        pythonpath: Path | None = None,
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
        timeout: float = 180,
    ) -> None:
        full_env = {**os.environ, **(env or {})}
        if pythonpath is not None:
            full_env["PYTHONPATH"] = str(pythonpath)
        self._log = open(log_file or os.devnull, "w")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "vaeserve.server.cli", "--model-repo", str(repo)]
        command += ["--host", "127.0.0.1", "--port", "0", "--device", "cpu", *args]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, env=full_env
        )
        self.port = 0
        found = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if m and not found.is_set():
                    self.port = int(m.group(1))
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vae-server did not start (rc {self.proc.poll()})")

    @property
    def target(self) -> str:
        """host:port to connect to."""
        return f"127.0.0.1:{self.port}"

    def rss_kib(self) -> int | None:
        """VmRSS: resident memory now."""
        return status_kib(self.proc.pid, "VmRSS")

    def hwm_kib(self) -> int | None:
        """VmHWM: peak resident memory so far."""
        return status_kib(self.proc.pid, "VmHWM")

    def reset_hwm(self) -> bool:
        """Reset VmHWM to the current RSS (Linux: clear_refs 5), so the next peak is the
        next measurement's own; False where the kernel does not allow it."""
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then kill after 20 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    """A temporary directory removed at the end of a `with`."""
    return tempfile.TemporaryDirectory(prefix=prefix)
