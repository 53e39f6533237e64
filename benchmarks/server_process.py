"""`vae-server` as a subprocess on a free loopback port: started (from this checkout or, with
`pythonpath`, from an unpacked older commit), watched for memory through /proc, stopped.

A subprocess, so that the benchmark's clients and the server do not share a GIL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.procfs import status_kib


class ServerProcess:
    """`python -m vaeserve.server.cli` on a free loopback port, its log in `log_file`."""

    def __init__(
        self,
        repo: Path,
        *args: str,
        device: str = "cpu",
        log_file: Path | None = None,
        pythonpath: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 180,
    ) -> None:
        full_env = {**os.environ, **(env or {})}
        if pythonpath is not None:
            full_env["PYTHONPATH"] = str(pythonpath)
        self.command = [sys.executable, "-m", "vaeserve.server.cli", "--model-repo", str(repo)]
        self.command += ["--host", "127.0.0.1", "--port", "0", "--device", device, *args]
        self._log_file = log_file
        self._log = open(log_file or os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=self._log, text=True, env=full_env
        )
        self.port = 0
        self.banner = ""
        found = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if m and not found.is_set():
                    self.port, self.banner = int(m.group(1)), line.strip()
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self._log_file.read_text()[-2000:] if self._log_file else ""
                raise RuntimeError(f"vae-server did not start (rc {self.proc.poll()}): {log}")
        self.rss_after_load_kib = self.rss_kib()

    @property
    def target(self) -> str:
        """host:port to connect to."""
        return f"127.0.0.1:{self.port}"

    def rss_kib(self) -> int | None:
        """VmRSS: resident memory now."""
        return status_kib(self.proc.pid, "VmRSS")

    def peak_rss_kib(self) -> int | None:
        """VmHWM: peak resident memory so far (since start or the last `reset_peak`)."""
        return status_kib(self.proc.pid, "VmHWM")

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux: clear_refs 5), so the next peak is the next
        measurement's own; False where the kernel does not allow it."""
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
