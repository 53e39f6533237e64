"""Helpers for server tests: direct onnxruntime reference runs, stubs, a vae-server subprocess."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from vaeserve.common.manifest import load_manifest
from vaeserve.common.tensors import from_tensor, to_tensor
from vaeserve.proto.vae.v1 import vae_pb2, vae_pb2_grpc

VAE_SERVER = Path(sys.executable).parent / "vae-server"
TOL = {"rtol": 1e-5, "atol": 1e-5}


class Reference:
    """The model's graphs run directly with onnxruntime on CPU: what the server must match."""

    def __init__(self, model_dir: Path) -> None:
        self.manifest = load_manifest(model_dir)
        self.sessions = {
            g: ort.InferenceSession(str(model_dir / spec.file), providers=["CPUExecutionProvider"])
            for g, spec in self.manifest.graphs.items()
        }

    def run(self, graph: str, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        sess = self.sessions[graph]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds), strict=True))


def ref(name: str = "", version: int = 0) -> vae_pb2.ModelRef:
    return vae_pb2.ModelRef(name=name, version=version)


def loopback_channel(port: int) -> grpc.Channel:
    """An insecure channel to 127.0.0.1:port with 64 MiB message limits."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )


def stub_for(port: int) -> tuple[grpc.Channel, vae_pb2_grpc.VaeServiceStub]:
    """A channel and VaeService stub on 127.0.0.1:port with large message limits."""
    channel = loopback_channel(port)
    return channel, vae_pb2_grpc.VaeServiceStub(channel)


def arr(t: vae_pb2.Tensor) -> np.ndarray:
    return np.array(from_tensor(t))


def rows_tensor(x: np.ndarray) -> vae_pb2.Tensor:
    return to_tensor(np.asarray(x))


def score_requests(x: np.ndarray, batch: int, model: str = "", **kw: object) -> list:
    """ScoreRequests of `batch` rows each with batch ids b0, b1, ... and start offsets."""
    out = []
    for i, start in enumerate(range(0, len(x), batch)):
        out.append(
            vae_pb2.ScoreRequest(
                model=ref(model) if (model and i == 0) else None,
                batch_id=f"b{i}",
                rows=to_tensor(x[start : start + batch]),
                start_offset=start,
                **kw,  # type: ignore[arg-type]
            )
        )
    return out


class QueueStream:
    """A request iterator fed from a queue, so a test decides when each message is sent."""

    _END = object()

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def put(self, msg: object) -> None:
        self.q.put(msg)

    def close(self) -> None:
        self.q.put(self._END)

    def __iter__(self) -> Iterator:
        while True:
            msg = self.q.get()
            if msg is self._END:
                return
            yield msg


class ServerProcess:
    """`vae-server` as a subprocess on a free port; reads the bound port from its stdout."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> None:
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [str(VAE_SERVER), "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._first = threading.Event()
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        self.port = 0
        self.banner = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port, self.banner = int(m.group(1)), line
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"vae-server did not start (rc {self.proc.poll()}):\n" + "".join(self.stderr_lines)
        )

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run vae-server to completion (for start-up errors); returns CompletedProcess."""
    return subprocess.run(
        [str(VAE_SERVER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
