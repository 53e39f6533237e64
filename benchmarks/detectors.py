"""The anomaly detectors the quality benchmark compares (our exported scorer, PyOD's VAE,
IsolationForest, PCA), their names in the tables, and the AUROC/AUPRC metric."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import Stopwatch

OUR_SCORES = ("kl", "recon_nll", "neg_elbo")
THREADS = 2  # torch and onnxruntime threads in the quality runs

# PyOD's VAE with an architecture like ours (encoder 256-128, latent 8, decoder 128-256, no
# dropout; ours has none). epoch_num=250 at batch_size=32 gives about as many gradient steps
# as our early-stopped runs take on the one-class splits with the default step budget
# (TrainConfig.budget): about 500 on a digit's 90 rows (PyOD: 2 steps per epoch, it drops the
# last partial batch; ours: 1 step per epoch on 72 rows after holding out 20% for validation)
# and about 1300 on breast_cancer's 178. Everything else is PyOD's default.
PYOD_COMMON: dict[str, Any] = {
    "encoder_neuron_list": [256, 128],
    "decoder_neuron_list": [128, 256],
    "latent_dim": 8,
    "dropout_rate": 0.0,
    "epoch_num": 250,
    "batch_size": 32,
    "lr": 1e-3,
    "beta": 1.0,
    "preprocessing": True,
    "device": "cpu",
    "verbose": 0,
}
# PyOD clamps the batch-mean KL term to [0, capacity]: its default capacity=0 removes the KL
# term from the loss (a noisy autoencoder); capacity=inf keeps the full beta-VAE objective.
PYOD_VARIANTS: dict[str, dict[str, Any]] = {
    "pyod_vae": {"capacity": 0.0},
    "pyod_vae_kl": {"capacity": math.inf},
}
METHODS = (
    *(f"ours_{s}" for s in OUR_SCORES),
    *PYOD_VARIANTS,
    "isolation_forest",
    "pca",
)
LABELS = {
    "ours_kl": "ours: kl",
    "ours_recon_nll": "ours: recon_nll",
    "ours_neg_elbo": "ours: neg_elbo",
    "pyod_vae": "PyOD VAE (capacity 0, default)",
    "pyod_vae_kl": "PyOD VAE (capacity inf)",
    "isolation_forest": "IsolationForest (300 trees)",
    "pca": "PCA recon. (90% var.)",
}
SHORT = {
    "ours_kl": "ours kl",
    "ours_recon_nll": "ours recon",
    "ours_neg_elbo": "ours -ELBO",
    "pyod_vae": "PyOD VAE",
    "pyod_vae_kl": "PyOD VAE (KL)",
    "isolation_forest": "IForest",
    "pca": "PCA",
}


def metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC with anomalies (y == 1) as the positive class; higher score = anomalous."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {
        "auroc": float(roc_auc_score(y, scores)),
        "auprc": float(average_precision_score(y, scores)),
    }


def onnx_scores(scorer: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Score rows with a fresh onnxruntime session (CPU) on an exported scorer.onnx."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(scorer), options, providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"], session.get_providers()
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})
    return dict(zip(names, outputs, strict=True))


def fit_pyod_vae(settings: dict[str, Any], x: np.ndarray) -> tuple[Any, float, float]:
    """`pyod.models.vae.VAE(**settings).fit(x)`; returns (detector, wall seconds, CPU seconds)."""
    from pyod.models.vae import VAE

    detector = VAE(**settings)
    clock = Stopwatch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector.fit(x)
    return detector, *clock.read()


def pyod_settings(epochs: int | None = None) -> dict[str, dict[str, Any]]:
    """The exact keyword arguments of each PyOD VAE variant (random_state is the seed)."""
    common = dict(PYOD_COMMON)
    if epochs is not None:
        common["epoch_num"] = epochs
    return {name: {**common, **extra} for name, extra in PYOD_VARIANTS.items()}


def fit_pyod(
    train_x: np.ndarray, variant: str, seed: int, epochs: int | None = None
) -> tuple[Any, float, float]:
    """Fit one PyOD VAE variant; returns (detector, wall seconds, CPU seconds)."""
    return fit_pyod_vae({"random_state": seed, **pyod_settings(epochs)[variant]}, train_x)


def isolation_forest_scores(
    train_x: np.ndarray, test_x: np.ndarray, seed: int
) -> tuple[np.ndarray, float]:
    """IsolationForest(n_estimators=300, random_state=seed); returns (scores, fit seconds)."""
    from sklearn.ensemble import IsolationForest

    clock = Stopwatch()
    model = IsolationForest(n_estimators=300, random_state=seed).fit(train_x)
    seconds = clock.wall_s
    return -model.score_samples(test_x), seconds


def pca_scores(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, float]:
    """Squared reconstruction error of a PCA keeping 90% of the variance of the standardised
    training rows (deterministic: the same for every seed); returns (scores, fit seconds)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    clock = Stopwatch()
    scaler = StandardScaler().fit(train_x)
    pca = PCA(n_components=0.9, svd_solver="full").fit(scaler.transform(train_x))
    seconds = clock.wall_s
    z = scaler.transform(test_x)
    recon = pca.inverse_transform(pca.transform(z))
    return ((z - recon) ** 2).sum(axis=1), seconds
