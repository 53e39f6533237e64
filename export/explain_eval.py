"""Does the explanation name the right feature? Corrupt one known feature of each of some
held-out normal rows, score them with the exported graphs under onnxruntime, and count how
often the top-ranked feature of a flagged row is the corrupted one."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vaeserve.common.explain import baseline, top_features
from vaeserve.common.manifest import load_manifest


@dataclass
class CorruptionResult:
    """rows corrupted, how many the flag caught, and how many of those have the corrupted
    feature first (rate = hits / flagged); rate_all: the same over every corrupted row;
    max_sum_error: the largest relative gap between a row's per-feature NLL sum and the
    scorer's recon_nll."""

    rows: int
    shift_sd: float
    score: str
    flagged: int
    hits: int
    rate: float
    rate_all: float
    max_sum_error: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corrupt(
    x: np.ndarray, scale: np.ndarray, shift_sd: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shift one feature per row by ±shift_sd training standard deviations; the features
    cycle through all D in a seeded random order, signs are random. Returns (rows, features)."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    features = rng.permutation(np.resize(np.arange(d), n))
    signs = rng.choice([-1.0, 1.0], n)
    out = np.array(x, np.float32, copy=True)
    out[np.arange(n), features] += (signs * shift_sd * scale[features]).astype(np.float32)
    return out, features


def corruption_hit_rate(
    model_dir: str | Path,
    x: np.ndarray,
    shift_sd: float = 5.0,
    seed: int = 0,
    score: str = "neg_elbo",
    rank_by_excess: bool = True,
) -> CorruptionResult:
    """Corrupt rows x of a model version in model_dir (see `corrupt`), flag them with the
    calibrated `score` threshold, and measure the top-1 hit rate among the flagged rows.
    rank_by_excess=False ranks by raw per-feature NLL instead (for comparison)."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    if manifest.cond_dim:
        raise ValueError("corruption_hit_rate takes unconditional models")
    scale = np.asarray(manifest.normalisation["scale"], np.float64)
    bad, features = corrupt(np.asarray(x), scale, shift_sd, seed)

    def run(graph: str, names: list[str]) -> list[np.ndarray]:
        path = model_dir / manifest.graphs[graph].file
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(names, {"x": bad})

    (scores, recon) = run("scorer", [score, "recon_nll"])
    per_feature, x_hat = run("explainer", ["recon_nll_per_feature", "x_hat"])
    sums = per_feature.astype(np.float64).sum(1)
    max_sum_error = float(np.max(np.abs(sums - recon) / np.maximum(np.abs(recon), 1.0)))
    flagged = scores > manifest.calibration.thresholds[score]
    base = baseline(manifest) if rank_by_excess else None
    top = top_features(per_feature, bad, x_hat, 1, base)
    hit = top.index[:, 0] == features
    hits = int(hit[flagged].sum())
    n_flagged = int(flagged.sum())
    return CorruptionResult(
        rows=len(bad),
        shift_sd=shift_sd,
        score=score,
        flagged=n_flagged,
        hits=hits,
        rate=hits / n_flagged if n_flagged else float("nan"),
        rate_all=float(hit.mean()),
        max_sum_error=max_sum_error,
    )
