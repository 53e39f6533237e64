"""The model repository: REPO/NAME/VERSION/ folders loaded into warm onnxruntime sessions.

`scan()` loads versions that appeared and forgets versions whose folder went away; the server
calls it at start and then every `poll_interval_s`. A version that fails to load is logged and
retried only when its files change. Requests hold a reference to the LoadedModel they resolved,
so a version that is replaced or removed finishes the calls already using it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from vaeserve.common.flagging import Flagger
from vaeserve.common.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    list_versions,
    load_manifest,
)
from vaeserve.server.batching import BatchObserver, DynamicBatcher
from vaeserve.server.errors import RequestError, echo
from vaeserve.server.monitoring import Monitoring
from vaeserve.server.sessions import DeviceError, GraphRunner, SessionFactory
from vaeserve.server.settings import ServerSettings

log = logging.getLogger(__name__)


class LoadError(RuntimeError):
    """A model version that cannot be served (bad manifest, graph I/O that does not match)."""


# Inputs each graph must take besides `cond` (present exactly when cond_dim > 0).
GRAPH_INPUTS = {
    "encoder": ("x",),
    "decoder": ("z",),
    "scorer": ("x",),
    "iw_scorer": ("x", "noise"),
    "explainer": ("x",),
}
# Outputs each graph must have (the scorer of newer exports also returns mu and logvar).
GRAPH_OUTPUTS = {
    "encoder": ("mu", "logvar"),
    "decoder": ("x_hat",),
    "scorer": ("kl", "kl_per_dim", "recon_nll", "neg_elbo"),
    "iw_scorer": ("iw_nll",),
    "explainer": ("recon_nll_per_feature", "x_hat"),
}


@dataclass
class LoadedModel:
    """One warm model version: its manifest, sessions, batchers, flagger (p-values and
    thresholds) and monitoring (explanation baseline, drift window)."""

    name: str
    version: int
    path: Path
    manifest: Manifest
    manifest_json: str
    runners: dict[str, GraphRunner]
    batchers: dict[str, DynamicBatcher]
    flagger: Flagger
    device: str
    monitoring: Monitoring = field(default_factory=Monitoring)
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0

    @property
    def label(self) -> str:
        """ "model 'digits' version 1", for messages."""
        return f"model {self.name!r} version {self.version}"

    @property
    def providers(self) -> list[str]:
        """Execution providers in use across this version's sessions, in priority order."""
        out: list[str] = []
        for r in self.runners.values():
            out.extend(p for p in r.providers if p not in out)
        return out

    def batcher(self, graph: str) -> DynamicBatcher:
        """The batcher of one graph; FAILED_PRECONDITION when the export lacks that graph."""
        b = self.batchers.get(graph)
        if b is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self.label} has no {graph} graph; "
                "re-export it with vae-export to get all its graphs",
            )
        return b

    def report(self) -> dict[str, Any]:
        """What was loaded: graphs with their providers and I/O, device, load and warm-up time."""
        return {
            "model": self.name,
            "version": self.version,
            "path": str(self.path),
            "device": self.device,
            "providers": self.providers,
            "graphs": {
                g: {"providers": r.providers, "inputs": r.input_names, "outputs": r.output_names}
                for g, r in self.runners.items()
            },
            "input_dim": self.manifest.input_dim,
            "latent_dim": self.manifest.latent_dim,
            "cond_dim": self.manifest.cond_dim,
            "load_s": round(self.load_seconds, 4),
            "warmup_s": round(self.warmup_seconds, 4),
            "explain": self.monitoring.explain_baseline is not None,
            "drift_window_rows": self.drift_window_rows,
        }

    @property
    def drift_window_rows(self) -> int:
        """The size of this version's drift window (0: it keeps none)."""
        drift = self.monitoring.drift
        return drift.window.size if drift is not None else 0


# Makes the BatchObserver of one (model name, graph), or None for no observer.
ObserverFactory = Callable[[str, str], BatchObserver | None]


@dataclass
class ScanResult:
    """What one scan changed."""

    added: list[tuple[str, int]] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _signature(path: Path) -> tuple:
    try:
        return tuple(
            sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir())
        )
    except OSError:
        return ()


class ModelRepository:
    """Loaded versions by name; reads are lock-free (the mapping is replaced, never mutated)."""

    def __init__(
        self,
        settings: ServerSettings,
        factory: SessionFactory,
        executor: Executor,
        observers: ObserverFactory | None = None,
    ) -> None:
        self.root = Path(settings.model_repo)
        self.settings = settings
        self.factory = factory
        self.executor = executor
        self.observers = observers
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._failed: dict[Path, tuple] = {}
        self._scan_lock = threading.Lock()

    # ---- reading -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[int, LoadedModel]]:
        """The current name -> version -> model mapping (do not mutate)."""
        return self._models

    def get(self, name: str, version: int = 0) -> LoadedModel:
        """Resolve a ModelRef; version 0 is the newest. Raises RequestError naming what exists."""
        models = self._models
        if version < 0:
            raise RequestError.invalid(f"model version {version} is negative; use 0 for newest")
        if not name:
            if len(models) == 1:
                name = next(iter(models))
            else:
                raise RequestError.invalid(
                    "model.name is required when the server holds "
                    f"{'no' if not models else len(models)} models; loaded: {self.describe()}"
                )
        versions = models.get(name)
        if not versions:
            raise RequestError.not_found(
                f"model {echo(name)} is not loaded; loaded models: {self.describe()}"
            )
        if version == 0:
            return versions[max(versions)]
        model = versions.get(version)
        if model is None:
            raise RequestError.not_found(
                f"model {echo(name)} has no version {version}; loaded versions: "
                f"{', '.join(map(str, sorted(versions)))} (or 0 for the newest)"
            )
        return model

    def loaded(self) -> list[LoadedModel]:
        """Every loaded version, by name then version."""
        return [
            m for _, versions in sorted(self._models.items()) for _, m in sorted(versions.items())
        ]

    def providers(self) -> list[str]:
        """Execution providers in use across every loaded version."""
        out: list[str] = []
        for m in self.loaded():
            out.extend(p for p in m.providers if p not in out)
        return out

    def describe(self, where: bool = False) -> str:
        """'digits (versions 1, 2); other (version 1)' or 'none'; with `where` (for the
        server's own log lines, never for clients) 'none' names the repository folder."""
        parts = [
            f"{n} (version{'s' if len(v) > 1 else ''} {', '.join(map(str, sorted(v)))})"
            for n, v in sorted(self._models.items())
        ]
        if parts:
            return "; ".join(parts)
        return f"none (the repository {self.root} holds no loadable model)" if where else "none"

    # ---- loading -------------------------------------------------------------------------
    def scan(self, strict: bool = False) -> ScanResult:
        """Load new versions and forget vanished ones (blocking: call from a worker thread).

        With strict, DeviceError propagates (used at start, where it must stop the server).
        """
        with self._scan_lock:
            result = ScanResult()
            on_disk: dict[str, list[int]] = {}
            if not self.root.is_dir():
                raise LoadError(f"model repository {self.root} is not a directory")
            for d in sorted(self.root.iterdir()):
                if d.is_dir() and not d.name.startswith("."):
                    on_disk[d.name] = list_versions(d)
            models = {n: dict(v) for n, v in self._models.items()}
            for name, versions in on_disk.items():
                for version in versions:
                    if version in models.get(name, {}):
                        continue
                    path = self.root / name / str(version)
                    sig = _signature(path)
                    if self._failed.get(path) == sig:
                        continue
                    try:
                        model = self.load(name, version, path)
                    except DeviceError:
                        if strict:
                            raise
                        self._failed[path] = sig
                        log.exception("cannot load %s", path)
                        continue
                    except (ManifestError, LoadError, OSError, ValueError) as exc:
                        self._failed[path] = sig
                        result.failed.append((path, str(exc)))
                        log.error("cannot load model %s version %d: %s", name, version, exc)
                        continue
                    except Exception as exc:  # onnxruntime's own errors
                        self._failed[path] = sig
                        result.failed.append((path, str(exc)))
                        log.error("cannot load model %s version %d: %s", name, version, exc)
                        continue
                    self._failed.pop(path, None)
                    models.setdefault(name, {})[version] = model
                    result.added.append((name, version))
            for name in list(models):
                for version in list(models[name]):
                    if version not in on_disk.get(name, []):
                        del models[name][version]
                        result.removed.append((name, version))
                        log.info("model %s version %d is gone from disk; unloaded", name, version)
                if not models[name]:
                    del models[name]
            self._models = models
            return result

    def load(self, name: str, version: int, path: Path) -> LoadedModel:
        """Read the manifest, open and check every graph, warm it up and build its batchers."""
        t0 = time.perf_counter()
        manifest = load_manifest(path, verify=self.settings.verify_hashes)
        manifest_json = client_manifest_json((path / MANIFEST_FILE).read_text())
        if (manifest.name, manifest.version) != (name, version):
            log.info(
                "%s: manifest says %s version %d; serving it as %s version %d (its folder)",
                path,
                manifest.name,
                manifest.version,
                name,
                version,
            )
        runners: dict[str, GraphRunner] = {}
        for graph, spec in manifest.graphs.items():
            if graph not in GRAPH_INPUTS:
                log.warning("%s: ignoring unknown graph %r", path, graph)
                continue
            runner = self.factory.create(path / spec.file, graph)
            _check_io(path, graph, runner, manifest)
            runners[graph] = runner
        for graph in ("encoder", "scorer"):
            if graph not in runners:
                raise LoadError(f"{path}: the manifest lists no {graph} graph")
        t_warm = time.perf_counter()
        if self.settings.warmup:
            for graph, runner in runners.items():
                for n in sorted({1, min(64, self.settings.max_batch_rows)}):
                    runner.run(_dummy_feeds(graph, manifest, n))
        warmup_seconds = time.perf_counter() - t_warm
        batchers = {
            graph: DynamicBatcher(
                runner,
                self.executor,
                max_rows=self.settings.max_batch_rows,
                max_delay_s=self.settings.max_queue_delay_ms / 1000.0,
                batch_axes={"noise": 1},
                empty_outputs=_output_shapes(graph, manifest),
                observer=self.observers(name, graph) if self.observers else None,
            )
            for graph, runner in runners.items()
        }
        label = f"model {name!r} version {version}"
        monitoring = Monitoring.for_model(
            manifest,
            label,
            graphs=runners,
            scorer_outputs=runners["scorer"].output_names,
            window_rows=self.settings.drift_window_rows,
        )
        model = LoadedModel(
            name=name,
            version=version,
            path=path,
            manifest=manifest,
            manifest_json=manifest_json,
            runners=runners,
            batchers=batchers,
            flagger=Flagger(manifest.calibration, label),
            device=self.factory.device,
            monitoring=monitoring,
            warmup_seconds=warmup_seconds,
        )
        model.load_seconds = time.perf_counter() - t0
        log.info(
            "loaded model %s version %d from %s on %s (%s) in %.2fs (warm-up %.3fs)",
            name,
            version,
            path,
            model.device,
            ", ".join(model.providers),
            model.load_seconds,
            warmup_seconds,
            extra={"fields": {"event": "model_loaded", **model.report()}},
        )
        return model


_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")  # /x, ~/x, C:\x, C:/x, \\host\x


def client_manifest_json(text: str) -> str:
    """The manifest as clients see it (ModelInfo.manifest_json): no server paths. The
    training run directory is left out, a data file is named by its file name only, and any
    other absolute path is cut to its last part."""
    manifest = json.loads(text)
    training = manifest.get("training")
    config = training.get("config") if isinstance(training, dict) else None
    if isinstance(config, dict):
        config.pop("run_dir", None)
        data = config.get("data")
        if isinstance(data, str) and not data.startswith("builtin:"):
            config["data"] = _last_part(data)

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str) and _ABSOLUTE.match(value):
            return _last_part(value)
        return value

    return json.dumps(scrub(manifest), indent=2) + "\n"


def _last_part(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1]


def _check_io(path: Path, graph: str, runner: GraphRunner, m: Manifest) -> None:
    want = set(GRAPH_INPUTS[graph]) | ({"cond"} if m.cond_dim > 0 else set())
    have = set(runner.input_names)
    if have != want:
        raise LoadError(
            f"{path}: {graph} graph takes inputs {sorted(have)} but a model with cond_dim "
            f"{m.cond_dim} needs {sorted(want)}; re-export the model"
        )
    missing = set(GRAPH_OUTPUTS[graph]) - set(runner.output_names)
    if missing:
        raise LoadError(f"{path}: {graph} graph lacks outputs {sorted(missing)}; re-export it")


def _dummy_feeds(graph: str, m: Manifest, n: int) -> dict[str, np.ndarray]:
    """Zero inputs of batch n in raw units (the mean row is a fine warm-up input)."""
    feeds: dict[str, np.ndarray] = {}
    mean = np.asarray(m.normalisation.get("mean", [0.0] * m.input_dim), np.float32)
    if graph == "decoder":
        feeds["z"] = np.zeros((n, m.latent_dim), np.float32)
    else:
        feeds["x"] = np.broadcast_to(mean, (n, m.input_dim)).copy()
    if graph == "iw_scorer":
        feeds["noise"] = np.zeros((2, n, m.latent_dim), np.float32)
    if m.cond_dim > 0:
        cond = np.zeros((n, m.cond_dim), np.float32)
        cond[:, 0] = 1.0
        feeds["cond"] = cond
    return feeds


def _output_shapes(graph: str, m: Manifest) -> dict[str, tuple[int, ...]]:
    """Per-row output shapes, for answering zero-row requests without calling the graph."""
    per_row = {
        "mu": (m.latent_dim,),
        "logvar": (m.latent_dim,),
        "x_hat": (m.input_dim,),
        "kl": (),
        "kl_per_dim": (m.latent_dim,),
        "recon_nll": (),
        "neg_elbo": (),
        "iw_nll": (),
        "recon_nll_per_feature": (m.input_dim,),
    }
    return {k: per_row[k] for k in GRAPH_OUTPUTS[graph]}
