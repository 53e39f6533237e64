"""Top-K feature attribution from per-feature reconstruction NLLs (numpy, no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from vaeserve.common.explain import ExplainUnavailable, baseline, top_features
from vaeserve.common.manifest import Calibration, ExplainSpec, GraphSpec, Manifest


def _rows(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, ...]:
    x = rng.normal(size=(n, d))
    x_hat = x + rng.normal(scale=0.1, size=(n, d))
    nll = rng.normal(size=(n, d))
    return nll, x, x_hat


def test_ranks_by_excess_over_the_baseline() -> None:
    rng = np.random.default_rng(0)
    nll, x, x_hat = _rows(rng, 50, 7)
    base = rng.normal(scale=3.0, size=7)
    top = top_features(nll, x, x_hat, 3, base)
    excess = nll - base
    want = np.argsort(-excess, axis=1)[:, :3]
    np.testing.assert_array_equal(top.index, want)
    rows = np.arange(50)[:, None]
    np.testing.assert_array_equal(top.nll, nll[rows, want])
    np.testing.assert_array_equal(top.excess, excess[rows, want])
    np.testing.assert_array_equal(top.value, x[rows, want])
    np.testing.assert_array_equal(top.reconstruction, x_hat[rows, want])
    positive = np.clip(excess, 0, None).sum(1, keepdims=True)
    np.testing.assert_allclose(top.share, excess[rows, want] / positive)
    # a unit change adds a constant to a feature's NLL and to its baseline: same ranking
    units = np.array([0.0, 9.0, 0.0, 0.0, -4.0, 0.0, 0.0])
    shifted = top_features(nll + units, x, x_hat, 3, base + units)
    np.testing.assert_array_equal(shifted.index, top.index)
    raw = top_features(nll, x, x_hat, 7)  # no baseline: raw NLL order
    np.testing.assert_array_equal(raw.index, np.argsort(-nll, axis=1, kind="stable"))


def test_ties_go_to_the_lower_index_and_nan_ranks_last() -> None:
    nll = np.array([[1.0, 3.0, 3.0, np.nan, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    x = np.zeros_like(nll)
    top = top_features(nll, x, x, 5)
    np.testing.assert_array_equal(top.index, [[1, 2, 4, 0, 3], [0, 1, 2, 3, 4]])
    assert np.all(top.share[1] == 0.0)  # no positive excess: no share
    assert top.names(["a", "b", "c", "d", "e"])[0][:2] == ["b", "c"]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 9, 12])
def test_every_k_ranks_as_a_stable_sort_does(k: int) -> None:
    # small K takes argmax passes, large K sorts: both must give the stable sort's order,
    # with many ties (integer values), NaN and -inf in the rows
    rng = np.random.default_rng(k)
    nll = rng.integers(-3, 4, size=(400, 12)).astype(np.float64)
    nll[rng.random(nll.shape) < 0.1] = np.nan
    nll[rng.random(nll.shape) < 0.05] = -np.inf
    nll[:5] = np.nan  # rows with nothing finite
    top = top_features(nll, nll, nll, k)
    want = np.argsort(-nll, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top.index, want)


def test_bad_arguments() -> None:
    nll, x, x_hat = _rows(np.random.default_rng(1), 4, 3)
    with pytest.raises(ValueError, match="k must be between 1 and the 3 features"):
        top_features(nll, x, x_hat, 4)
    with pytest.raises(ValueError, match="alike"):
        top_features(nll, x[:, :2], x_hat, 1)
    with pytest.raises(ValueError, match="baseline_nll must have 3 values"):
        top_features(nll, x, x_hat, 1, np.zeros(2))


def test_baseline_needs_an_explaining_export() -> None:
    spec = GraphSpec("explainer.onnx", "0" * 64, [], [])
    manifest = Manifest(
        name="m",
        version=3,
        input_dim=2,
        latent_dim=1,
        cond_dim=0,
        likelihood="gaussian",
        feature_names=["a", "b"],
        condition_classes=None,
        normalisation={"mean": [0, 0], "scale": [1, 1]},
        graphs={"explainer": spec},
        calibration=Calibration(1, [0.0], {}, {}),
        explain=ExplainSpec(rows=5, baseline_nll=[0.5, -1.0]),
    )
    np.testing.assert_array_equal(baseline(manifest), [0.5, -1.0])
    manifest.explain = None
    with pytest.raises(ExplainUnavailable, match="model 'm' version 3 has no explainer"):
        baseline(manifest)
