"""Where a batch job's rows get their scores: running `vae-server` replicas, or the exported
model loaded in the worker itself. A backend is a small picklable description that each worker
(a Ray actor, or the local process) opens into a client with `score` and `model_info`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaeserve.client.models import ModelInfo
from vaeserve.client.options import ConnectionOptions


@dataclass(frozen=True)
class ServerBackend:
    """Score through vae-server (`dns:///host:port` with round_robin spreads each worker's
    stream over the replicas); the service stays the one place models are served."""

    options: ConnectionOptions

    mode = "server"

    def portable(self) -> ServerBackend:
        """The same backend with certificate files read into bytes, so that workers on other
        machines need no copy of them."""
        changes = {
            name: Path(value).read_bytes()
            for name in ("tls_ca", "client_cert", "client_key")
            if isinstance(value := getattr(self.options, name), str | Path)
        }
        return dataclasses.replace(self, options=dataclasses.replace(self.options, **changes))

    def open(self, threads: int = 0, device: str = "cpu") -> Any:
        """A VaeClient on the server (threads and device are the server's business)."""
        from vaeserve.client.library import VaeClient

        return VaeClient.from_options(self.options)

    def describe(self) -> str:
        """For summaries: where the scores come from."""
        return f"server {self.options.target}"


@dataclass(frozen=True)
class InProcessBackend:
    """Score with the model directory's scorer.onnx in each worker (onnxruntime; needs the
    `[ray]` or `[serve]` extra)."""

    model_dir: str

    mode = "in-process"

    def portable(self) -> InProcessBackend:
        """Itself: the model directory must be readable at the same path on every worker."""
        return self

    def open(self, threads: int = 0, device: str = "cpu") -> Any:
        """A LocalModelClient with `threads` onnxruntime threads (0: one per core)."""
        from vaeserve.client.local_model import LocalModelClient

        return LocalModelClient(self.model_dir, threads=threads, device=device)

    def describe(self) -> str:
        """For summaries: where the scores come from."""
        return f"in-process {self.model_dir}"


Backend = ServerBackend | InProcessBackend


def model_fingerprint(info: ModelInfo) -> list[Any]:
    """What identifies a model's numbers: name, version and the scorer graph's sha256 (when the
    manifest says), so a resumed job is scored by the same model bits."""
    graphs = info.manifest.get("graphs", {}) if info.manifest else {}
    return [info.name, info.version, graphs.get("scorer", {}).get("sha256")]
