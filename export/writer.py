"""Write a trained run as a versioned model directory REPO/NAME/VERSION/ with a manifest."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from vaeserve.common.manifest import (
    Calibration,
    GraphSpec,
    GraphTensorSpec,
    Manifest,
    list_versions,
    sha256_file,
)
from vaeserve.export.drift_null import REPLICATES, SEED
from vaeserve.export.graphs import export_graph, graph_defs
from vaeserve.export.parity import check_parity
from vaeserve.export.references import drift_spec, explain_spec
from vaeserve.training.loop import load_model

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_OPSET = 18


@dataclass
class ExportResult:
    model_dir: Path
    version: int
    parity: dict[str, dict[str, float]]
    manifest: Manifest
    drift_seconds: float = 0.0  # time spent building the drift null


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _random_rows(vae, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if vae.likelihood == "bernoulli":
        return rng.random((n, vae.input_dim)).astype(np.float32)
    z = rng.standard_normal((n, vae.input_dim))
    return (vae.mean.numpy() + vae.scale.numpy() * z).astype(np.float32)


def export_model(
    run_dir: str | Path,
    model_repo: str | Path,
    name: str,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    drift_replicates: int = REPLICATES,
    drift_seed: int = SEED,
    drift_null: str = "auto",
) -> ExportResult:
    """Export RUN_DIR/model.pt to REPO/NAME/<next version>/ after onnx.checker and parity
    checks; the directory appears atomically, so a server polling REPO never sees half of it.
    The manifest also records the validation rows' explain baseline and drift reference
    (drift_null: "auto", "bootstrap" or "parametric"; see docs/monitoring.md)."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '.', '-' (max 64)")
    vae, state = load_model(run_dir)
    model_root = Path(model_repo) / name
    model_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=model_root))
    try:
        graphs: dict[str, GraphSpec] = {}
        for g in graph_defs(vae):
            path = staging / f"{g.name}.onnx"
            export_graph(g, vae, path, opset)
            onnx.checker.check_model(str(path), full_check=True)
            graphs[g.name] = GraphSpec(
                file=path.name,
                sha256=sha256_file(path),
                inputs=[GraphTensorSpec(n, list(s)) for n, s in g.inputs],
                outputs=[GraphTensorSpec(n, list(s)) for n, s in g.outputs],
            )
        val_x = state["val_x"].numpy()
        val_c = None if state["val_c"] is None else state["val_c"].numpy()
        rand_x = _random_rows(vae, 256, seed=1)
        rand_c = None
        if vae.cond_dim:
            rand_c = np.eye(vae.cond_dim, dtype=np.float32)[np.arange(256) % vae.cond_dim]
        parity = check_parity(
            staging,
            vae,
            {"validation": val_x, "random": rand_x},
            {"validation": val_c, "random": rand_c},
            tolerance,
        )
        t0 = time.perf_counter()
        drift = drift_spec(
            vae, val_x, val_c, replicates=drift_replicates, seed=drift_seed, method=drift_null
        )
        drift_seconds = time.perf_counter() - t0
        config: dict[str, Any] = state["config"]
        version = (list_versions(model_root) or [0])[-1] + 1
        manifest = Manifest(
            name=name,
            version=version,
            input_dim=vae.input_dim,
            latent_dim=vae.latent_dim,
            cond_dim=vae.cond_dim,
            likelihood=vae.likelihood,
            feature_names=list(state["feature_names"]),
            condition_classes=state["condition_classes"],
            normalisation={"mean": vae.mean.tolist(), "scale": vae.scale.tolist()},
            graphs=graphs,
            calibration=Calibration(**state["calibration"]),
            training={"config": config, "final_metrics": state["best_metrics"]},
            opset=opset,
            versions={
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "vaeserve": _package_version("vaeserve"),
            },
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            explain=explain_spec(vae, val_x, val_c),
            drift=drift,
        )
        (staging / "manifest.json").write_text(manifest.to_json() + "\n")
        # claim the version number atomically; a concurrent export takes the next one
        while True:
            target = model_root / str(version)
            try:
                staging.rename(target)
                target.chmod(0o755)
                break
            except OSError:
                if not target.exists():
                    raise
                version += 1
                manifest.version = version
                (staging / "manifest.json").write_text(manifest.to_json() + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(target, version, parity, manifest, drift_seconds)
