"""The explainer graph and the scorer's posterior outputs: exported, hashed, parity-checked,
and per-feature NLLs that sum to recon_nll and name a corrupted feature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import quick_config
from vaeserve.common.drift import DriftReference, DriftUnavailable
from vaeserve.common.explain import ExplainUnavailable, baseline
from vaeserve.common.manifest import MANIFEST_FILE, load_manifest, sha256_file
from vaeserve.export import check_parity, export_model
from vaeserve.export.explain_eval import corruption_hit_rate
from vaeserve.training import load_dataset, load_model, one_class_split, train


def _run(model_dir: Path, graph: str, feeds: dict[str, np.ndarray], names: list[str]):
    session = ort.InferenceSession(
        str(model_dir / f"{graph}.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(names, feeds)


def _rows(digits_run) -> dict[str, np.ndarray]:
    vae, state = load_model(digits_run.run_dir)
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((50, vae.input_dim))
    return {
        "validation": state["val_x"].numpy(),
        "random": (vae.mean.numpy() + 3 * vae.scale.numpy() * noise).astype(np.float32),
    }


def test_explainer_sums_to_the_scorers_recon_nll(model_repo: Path, digits_run) -> None:
    model_dir = model_repo / "digits" / "1"
    m = load_manifest(model_dir)
    spec = m.graphs["explainer"]
    assert spec.sha256 == sha256_file(model_dir / spec.file)
    assert [(t.name, t.shape) for t in spec.outputs] == [
        ("recon_nll_per_feature", ["batch", 64]),
        ("x_hat", ["batch", 64]),
    ]
    vae, _ = load_model(digits_run.run_dir)
    for x in _rows(digits_run).values():
        per_feature, x_hat = _run(
            model_dir, "explainer", {"x": x}, ["recon_nll_per_feature", "x_hat"]
        )
        recon, mu = _run(model_dir, "scorer", {"x": x}, ["recon_nll", "mu"])
        np.testing.assert_allclose(
            per_feature.astype(np.float64).sum(1), recon, rtol=1e-4, atol=1e-3
        )
        with torch.no_grad():
            want, _ = vae.explain(torch.from_numpy(x))
        np.testing.assert_allclose(per_feature, want.numpy(), rtol=1e-4, atol=1e-4)
        # x_hat is the decoder's reconstruction at the posterior mean
        (decoded,) = _run(model_dir, "decoder", {"z": mu}, ["x_hat"])
        np.testing.assert_allclose(x_hat, decoded, rtol=1e-5, atol=1e-4)
    # the manifest's baseline is the validation rows' mean per-feature NLL
    val = _rows(digits_run)["validation"]
    (per_feature,) = _run(model_dir, "explainer", {"x": val}, ["recon_nll_per_feature"])
    assert m.explain is not None and m.explain.rows == len(val)
    np.testing.assert_allclose(baseline(m), per_feature.mean(0), rtol=1e-4, atol=1e-4)


def test_scorer_returns_the_encoders_posterior(model_repo: Path, digits_run) -> None:
    model_dir = model_repo / "digits" / "1"
    names = [t.name for t in load_manifest(model_dir).graphs["scorer"].outputs]
    assert names == ["kl", "kl_per_dim", "recon_nll", "neg_elbo", "mu", "logvar"]
    x = _rows(digits_run)["random"]
    mu, logvar, kl_dims = _run(model_dir, "scorer", {"x": x}, ["mu", "logvar", "kl_per_dim"])
    enc_mu, enc_logvar = _run(model_dir, "encoder", {"x": x}, ["mu", "logvar"])
    np.testing.assert_allclose(mu, enc_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logvar, enc_logvar, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        kl_dims, 0.5 * (mu**2 + np.exp(logvar) - logvar - 1.0), rtol=1e-4, atol=1e-5
    )


def test_parity_covers_the_explainer(model_repo: Path, digits_run) -> None:
    vae, _ = load_model(digits_run.run_dir)
    rows = _rows(digits_run)
    report = check_parity(model_repo / "digits" / "1", vae, rows, dict.fromkeys(rows))
    assert set(report["explainer"]) == {
        f"{r}/{o}" for r in rows for o in ("recon_nll_per_feature", "x_hat")
    }
    assert max(report["explainer"].values()) < 1e-4
    assert {"validation/mu", "validation/logvar"} <= set(report["scorer"])


def test_manifests_without_explain_or_drift_still_load(model_repo: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    data = json.loads((model_repo / "digits" / "1" / MANIFEST_FILE).read_text())
    for key in ("explain", "drift"):
        del data[key]
    del data["graphs"]["explainer"]
    data["graphs"]["scorer"]["outputs"] = data["graphs"]["scorer"]["outputs"][:4]
    (old / MANIFEST_FILE).write_text(json.dumps(data))
    m = load_manifest(old, verify=False)
    assert m.explain is None and m.drift is None and "explainer" not in m.graphs
    with pytest.raises(ExplainUnavailable, match="has no explainer graph"):
        baseline(m)
    with pytest.raises(DriftUnavailable, match="has no drift reference"):
        DriftReference.from_manifest(m)


def test_bernoulli_conditional_explainer(tmp_path: Path) -> None:
    digits = load_dataset("builtin:digits")
    np.savez(tmp_path / "d.npz", x=digits.x / 16.0, y=digits.labels)
    run = train(
        quick_config(
            tmp_path / "run",
            data=str(tmp_path / "d.npz"),
            likelihood="bernoulli",
            condition_on_label=True,
            epochs=2,
        )
    )
    model_dir = export_model(run.run_dir, tmp_path / "repo", "b", drift_replicates=200).model_dir
    x = (digits.x[:40] / 16.0).astype(np.float32)
    cond = np.eye(10, dtype=np.float32)[digits.labels[:40].astype(int)]
    feeds = {"x": x, "cond": cond}
    per_feature, p = _run(model_dir, "explainer", feeds, ["recon_nll_per_feature", "x_hat"])
    (recon,) = _run(model_dir, "scorer", feeds, ["recon_nll"])
    assert np.all((p > 0) & (p < 1))  # Bernoulli: x_hat is a probability
    # each feature's binary cross-entropy against the reconstructed probability
    bce = -(x * np.log(p.astype(np.float64)) + (1 - x) * np.log1p(-p.astype(np.float64)))
    np.testing.assert_allclose(per_feature, bce, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(per_feature.astype(np.float64).sum(1), recon, rtol=1e-4)


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A one-class breast-cancer model (benign is normal; the benchmark's 50/50 split of the
    benign rows) and its held-out benign test rows."""
    root = tmp_path_factory.mktemp("breast_cancer")
    train_ds, test_ds = one_class_split(load_dataset("builtin:breast_cancer"), "benign", seed=0)
    np.save(root / "train.npy", train_ds.x)
    run = train(quick_config(root / "run", data=str(root / "train.npy"), epochs=150, batch_size=32))
    model_dir = export_model(run.run_dir, root / "repo", "bc", drift_replicates=200).model_dir
    return model_dir, test_ds.x[test_ds.labels == "benign"]


@pytest.mark.slow
def test_top_feature_names_the_corrupted_one(breast_cancer) -> None:
    model_dir, normal = breast_cancer
    # 10 training sds: single-feature shifts below that rarely pass the calibrated neg_elbo
    # threshold, which a few outlying benign validation rows put high
    flagged = corruption_hit_rate(model_dir, normal, shift_sd=10.0, seed=0)
    assert flagged.max_sum_error < 1e-4
    assert flagged.flagged >= 20
    assert flagged.rate >= 0.9
    # over every corrupted row, flagged or not, even at 3 and 4 sds
    at3 = corruption_hit_rate(model_dir, normal, shift_sd=3.0, seed=1)
    assert at3.rate_all >= 0.85
    assert corruption_hit_rate(model_dir, normal, shift_sd=4.0, seed=2).rate_all >= 0.9
    # ranking by raw per-feature NLL instead is dominated by the features' units
    raw = corruption_hit_rate(model_dir, normal, shift_sd=3.0, seed=1, rank_by_excess=False)
    assert raw.rate_all < at3.rate_all - 0.2
