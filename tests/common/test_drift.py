"""The drift statistic's reference, p-values and running window (numpy, no model needed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vaeserve.common.drift import DriftReference, DriftWindow
from vaeserve.common.gaussian import clip_posteriors, kl_gaussian, moment_match
from vaeserve.export.drift_null import (
    LEVELS,
    build_drift_spec,
    clip_radius,
    fit_reference,
    null_statistics,
)

LATENT = 4


def _posteriors(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    mu = rng.standard_normal((n, LATENT)) @ np.diag([2.0, 1.0, 0.5, 0.05])
    return mu, rng.normal([-3.0, -2.0, -1.0, 0.0], 0.2, (n, LATENT))


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    mu, logvar = _posteriors(np.random.default_rng(0), 300)
    return DriftReference(build_drift_spec(mu, logvar, (16, 64, 256), replicates=2000, seed=3))


def test_the_null_is_seeded_and_its_method_follows_the_rows() -> None:
    mu, logvar = _posteriors(np.random.default_rng(1), 100)
    a = null_statistics(mu, logvar, (16, 64), 500, seed=5, method="bootstrap")
    b = null_statistics(mu, logvar, (16, 64), 500, seed=5, method="bootstrap")
    c = null_statistics(mu, logvar, (16, 64), 500, seed=6, method="bootstrap")
    assert a.shape == (2, 500) and np.array_equal(a, b) and not np.array_equal(a, c)
    # the null's centre falls as windows grow (less sampling error)
    assert np.median(a[1]) < np.median(a[0])
    few = build_drift_spec(mu[:40], logvar[:40], (16,), replicates=200)
    many = build_drift_spec(mu, logvar, (16,), replicates=200)
    assert (few.null_method, many.null_method) == ("parametric", "bootstrap")
    with pytest.raises(ValueError, match="method must be one of"):
        build_drift_spec(mu, logvar, (16,), replicates=200, method="magic")


def test_reference_is_the_moment_match_of_its_clipped_rows() -> None:
    rng = np.random.default_rng(2)
    mu, logvar = _posteriors(rng, 200)
    mu[:3] *= 40.0  # three rows far out along the posterior means' own spread
    logvar[3] = 6.0  # and one very uncertain row
    radius = clip_radius(LATENT)
    ref, cmu, clogvar = fit_reference(mu, logvar, radius)
    spec = build_drift_spec(mu, logvar, (16,), replicates=200)
    stored = DriftReference(spec)
    np.testing.assert_allclose(stored.gaussian.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(stored.gaussian.cov, ref.cov, rtol=1e-12, atol=1e-15)
    assert spec.clip_radius == radius
    # a fixed point: clipping the rows against the fitted Gaussian reproduces them
    again = clip_posteriors(mu, logvar, ref, radius)
    np.testing.assert_allclose(again[0], cmu, rtol=1e-8)
    d2 = np.einsum("ni,ij,nj->n", cmu - ref.mean, np.linalg.inv(ref.cov), cmu - ref.mean)
    assert np.all(d2 <= radius**2 * (1 + 1e-9))
    assert np.sum(np.any(cmu != mu, axis=1)) >= 3 and clogvar[3].max() < 6.0
    # the plain moment match is dominated by the far rows; the clipped one is not
    plain = moment_match(mu, logvar)
    inner = moment_match(mu[4:], logvar[4:])
    assert float(kl_gaussian(inner, ref)) < 0.1 < float(kl_gaussian(inner, plain))


def test_p_values_read_the_stored_quantiles(reference: DriftReference) -> None:
    for i, w in enumerate(reference.window_sizes.tolist()):
        q = reference.quantiles[i]
        at = {lv: q[int(np.argmin(np.abs(LEVELS - lv)))] for lv in (0.5, 0.9, 0.99)}
        for level, value in at.items():
            assert reference.p_value(value, w) == pytest.approx(1 - level, abs=1e-9)
        stats = np.linspace(0, q[-1] * 1.5, 200)
        p = reference.p_value(stats, w)
        assert np.all(np.diff(p) <= 0) and p[0] == 1.0
        assert p[-1] == pytest.approx(1 / 2001)  # floor: 1 / (replicates + 1)


def test_window_sizes_between_stored_ones_interpolate(reference: DriftReference) -> None:
    q16, q64 = reference.null_quantiles(16), reference.null_quantiles(64)
    q32 = reference.null_quantiles(32)
    assert np.all((q64 <= q32 + 1e-12) & (q32 <= q16 + 1e-12))
    # linear in 1/rows: 32 sits 2/3 of the way from 16 to 64
    np.testing.assert_allclose(q32, q16 + (q64 - q16) * (1 / 32 - 1 / 16) / (1 / 64 - 1 / 16))
    for rows in (15, 257):
        with pytest.raises(ValueError, match=r"outside the stored null \(16..256 rows\)"):
            reference.p_value(1.0, rows)
    mu, logvar = _posteriors(np.random.default_rng(9), 8)
    result = reference.measure(mu, logvar)
    assert result.p_value is None and result.rows == 8 and result.kl > 0


def test_result_parts(reference: DriftReference) -> None:
    rng = np.random.default_rng(4)
    mu, logvar = _posteriors(rng, 64)
    mu[:, 1] += 1.5  # move one latent dimension
    r = reference.measure(mu, logvar)
    assert int(np.argmax(r.kl_per_dim)) == 1 and r.share_per_dim[1] > 0.8
    assert r.share_per_dim.sum() == pytest.approx(1.0)
    assert r.p_value == pytest.approx(1 / 2001)
    same = reference.measure(*_posteriors(rng, 64))
    assert same.kl < r.kl / 10 and same.p_value > 0.01


def test_running_window_keeps_the_last_rows(reference: DriftReference) -> None:
    rng = np.random.default_rng(5)
    mu, logvar = _posteriors(rng, 500)
    window = DriftWindow(LATENT, 100)
    with pytest.raises(ValueError, match="empty"):
        window.evaluate(reference)
    fed = 0
    for size in (7, 60, 1, 150, 33, 0, 99):
        window.add(mu[fed : fed + size], logvar[fed : fed + size])
        fed += size
        last = slice(max(0, fed - 100), fed) if fed else slice(0, 0)
        assert window.rows == min(100, fed)
        if fed:
            got, want = window.evaluate(reference), reference.measure(mu[last], logvar[last])
            assert got.rows == want.rows and got.kl == pytest.approx(want.kl, rel=1e-9)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        window.add(mu[:3, :2], logvar[:3, :2])
    window.clear()
    assert window.rows == 0


def test_statistics_modules_import_without_torch_or_onnxruntime() -> None:
    code = (
        "import sys\n"
        "import vaeserve.common.drift, vaeserve.common.explain, vaeserve.common.gaussian\n"
        "bad = {'torch', 'onnxruntime', 'onnx'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
