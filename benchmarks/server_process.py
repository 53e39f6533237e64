"""`vae-server` as a subprocess on a free loopback port: started, watched for memory, stopped."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.procfs import status_kib


class ServerProcess:
    """`vae-server` as a subprocess on a free loopback port, its log in a file.

    A subprocess, so that the benchmark's clients and the server do not share a GIL.
    """

    def __init__(self, repo: Path, log_file: Path, device: str, timeout: float = 180) -> None:
        self.command = [
            str(Path(sys.executable).parent / "vae-server"),
            "--model-repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--device",
            device,
        ]
        self._log = open(log_file, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=self._log, text=True
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
                raise RuntimeError(
                    f"vae-server did not start (rc {self.proc.poll()}): {log_file.read_text()}"
                )
        self.rss_after_load_kib = status_kib(self.proc.pid, "VmRSS")

    @property
    def target(self) -> str:
        """host:port to connect to."""
        return f"127.0.0.1:{self.port}"

    def peak_rss_kib(self) -> int | None:
        """VmHWM: the server process's peak resident memory so far."""
        return status_kib(self.proc.pid, "VmHWM")

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
