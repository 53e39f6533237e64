"""Export: graphs, parity with PyTorch, the manifest, hashes, and bad checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vaeserve.common.calibration import PValues
from vaeserve.common.manifest import ManifestError, load_manifest, sha256_file
from vaeserve.export import export_model
from vaeserve.training import load_model
from vaeserve.training.loop import MODEL_FILE


def _session(model_dir: Path, graph: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(model_dir / f"{graph}.onnx"), providers=["CPUExecutionProvider"]
    )


def test_manifest_contents(model_repo: Path, digits_run) -> None:
    model_dir = model_repo / "digits" / "1"
    m = load_manifest(model_dir)
    assert (m.name, m.version, m.input_dim, m.latent_dim, m.cond_dim) == ("digits", 1, 64, 8, 0)
    assert m.likelihood == "gaussian" and len(m.feature_names) == 64
    assert set(m.graphs) == {"encoder", "decoder", "scorer", "iw_scorer", "explainer"}
    for spec in m.graphs.values():
        assert spec.sha256 == sha256_file(model_dir / spec.file)
    assert m.training["config"]["latent_dim"] == 8
    assert m.training["final_metrics"]["epoch"] == digits_run.best_epoch
    assert set(m.versions) == {"torch", "onnx", "onnxruntime", "vaeserve"}
    cal = m.calibration
    assert cal.threshold_quantile == 0.99 and len(cal.levels) == 1001
    assert cal.rows == round(1797 * 0.2)
    # the thresholds are the 0.99 quantiles of the validation scores the scorer gives
    state = torch.load(digits_run.run_dir / MODEL_FILE, weights_only=False)
    kl = _session(model_dir, "scorer").run(["kl"], {"x": state["val_x"].numpy()})[0]
    assert cal.thresholds["kl"] == pytest.approx(float(np.quantile(kl, 0.99)), rel=1e-5)
    p = PValues(cal, "kl")(kl)
    assert abs(float((p <= 0.01).mean()) - 0.01) < 0.01


def test_graphs_match_pytorch_and_the_kl_formula(model_repo: Path, digits_run) -> None:
    model_dir = model_repo / "digits" / "1"
    vae, state = load_model(digits_run.run_dir)
    rows = {"validation": state["val_x"].numpy()}
    rng = np.random.default_rng(5)
    rows["random"] = (
        vae.mean.numpy() + 3 * vae.scale.numpy() * rng.standard_normal((77, 64))
    ).astype(np.float32)
    for x in rows.values():
        kl, kl_dims, nll, nelbo = _session(model_dir, "scorer").run(
            ["kl", "kl_per_dim", "recon_nll", "neg_elbo"], {"x": x}
        )
        with torch.no_grad():
            t_kl, _t_dims, t_nll, _t_nelbo = vae.score(torch.from_numpy(x))
        np.testing.assert_allclose(kl, t_kl.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(nll, t_nll.numpy(), rtol=1e-4, atol=1e-3)
        mu, logvar = _session(model_dir, "encoder").run(None, {"x": x})
        closed = 0.5 * (mu**2 + np.exp(logvar) - logvar - 1.0)
        np.testing.assert_allclose(kl_dims, closed, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(kl, closed.sum(1), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(nelbo, nll + kl, rtol=1e-5, atol=1e-3)
        (x_hat,) = _session(model_dir, "decoder").run(None, {"z": mu})
        assert x_hat.shape == x.shape
    # dynamic batch: one row and many rows
    for n in (1, 4096):
        out = _session(model_dir, "scorer").run(
            ["kl"], {"x": np.tile(rows["validation"][:1], (n, 1))}
        )
        assert out[0].shape == (n,)


def test_importance_weighted_nll_tightens_with_k(model_repo: Path, digits_run) -> None:
    sess = _session(model_repo / "digits" / "1", "iw_scorer")
    _, state = load_model(digits_run.run_dir)
    x = state["val_x"].numpy()[:100]
    rng = np.random.default_rng(0)
    one = np.mean(
        [
            sess.run(None, {"x": x, "noise": rng.standard_normal((1, 100, 8)).astype(np.float32)})[
                0
            ]
            for _ in range(20)
        ],
        axis=0,
    )
    many = sess.run(None, {"x": x, "noise": rng.standard_normal((64, 100, 8)).astype(np.float32)})[
        0
    ]
    assert many.mean() < one.mean()  # E[-log p_IW,K] decreases with K (Burda et al.)


def test_versions_increment_and_hash_check(tmp_path: Path, digits_run) -> None:
    a = export_model(digits_run.run_dir, tmp_path, "m")
    b = export_model(digits_run.run_dir, tmp_path, "m")
    assert (a.version, b.version) == (1, 2)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]
    assert max(e for g in a.parity.values() for e in g.values()) < 1e-4
    with open(b.model_dir / "scorer.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="does not match the manifest"):
        load_manifest(b.model_dir)
    (a.model_dir / "decoder.onnx").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(a.model_dir)


def test_bad_checkpoints_are_refused(tmp_path: Path, digits_run) -> None:
    def run_export(run_dir: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "vaeserve.export.cli",
                str(run_dir),
                "--model-repo",
                str(tmp_path / "repo"),
                "--name",
                "x",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    missing = run_export(tmp_path / "nothing")
    assert missing.returncode == 1 and "no trained model; run vae-train first" in missing.stderr

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (digits_run.run_dir / MODEL_FILE).read_bytes()
    (truncated / MODEL_FILE).write_bytes(data[: len(data) // 2])
    res = run_export(truncated)
    assert res.returncode == 1 and "unreadable checkpoint" in res.stderr

    other = tmp_path / "other"
    other.mkdir()
    state = torch.load(digits_run.run_dir / MODEL_FILE, weights_only=False)
    state["checkpoint_version"] = 99
    torch.save(state, other / MODEL_FILE)
    res = run_export(other)
    assert res.returncode == 1 and "not a vaeserve checkpoint of version 1" in res.stderr
    assert not (tmp_path / "repo" / "x").exists() or not any((tmp_path / "repo" / "x").iterdir())


def test_conditional_model_exports_cond_inputs(tmp_path: Path) -> None:
    from tests.conftest import quick_config
    from vaeserve.training import train

    run = train(quick_config(tmp_path / "c", epochs=2, condition_on_label=True))
    res = export_model(run.run_dir, tmp_path / "repo", "cvae")
    m = json.loads((res.model_dir / "manifest.json").read_text())
    assert m["cond_dim"] == 10 and m["condition_classes"][0] == "0"
    names = [i.name for i in _session(res.model_dir, "scorer").get_inputs()]
    assert names == ["x", "cond"]
    shutil.rmtree(tmp_path / "repo")
