"""Training on real data: learning, determinism, resume, knobs and collapse warnings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import quick_config
from vaeserve.training import PosteriorCollapseWarning, train
from vaeserve.training.loop import CHECKPOINT_FILE, MODEL_FILE


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / MODEL_FILE, weights_only=False)["model"]


def _last_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)["model"]


def test_training_lowers_validation_neg_elbo(digits_run) -> None:
    history = digits_run.history
    assert history[0]["val_neg_elbo"] > digits_run.best_metrics["val_neg_elbo"] + 10.0
    m = digits_run.best_metrics
    assert m["val_neg_elbo"] == pytest.approx(m["val_recon"] + m["val_kl"], rel=1e-5)
    assert m["val_kl"] == pytest.approx(sum(m["val_kl_per_dim"]), rel=1e-4)
    assert 0 < m["active_units"] <= 8
    lines = (digits_run.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, len(history) + 1))
    assert (digits_run.run_dir / "curves.png").stat().st_size > 10_000


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    a = train(quick_config(tmp_path / "a", epochs=3))
    b = train(quick_config(tmp_path / "b", epochs=3))
    c = train(quick_config(tmp_path / "c", epochs=3, seed=1))
    wa, wb, wc = _weights(a.run_dir), _weights(b.run_dir), _weights(c.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_default_budget_counts_optimiser_steps() -> None:
    from vaeserve.training import TrainConfig

    assert TrainConfig().budget(steps_per_epoch=12) == (200, 20)  # all digits, batch 128
    assert TrainConfig().budget(steps_per_epoch=1) == (2000, 100)  # a one-class split
    assert TrainConfig().budget(steps_per_epoch=3) == (667, 34)
    assert TrainConfig(epochs=7, patience=3).budget(steps_per_epoch=1) == (7, 3)
    assert TrainConfig(patience=0).budget(steps_per_epoch=1) == (2000, 0)
    for bad, message in (({"epochs": 0}, "epochs"), ({"patience": -1}, "patience")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad).validate()


def test_small_data_gets_the_step_budget(tmp_path: Path) -> None:
    from vaeserve.training.data import load_builtin

    data = tmp_path / "small.npy"
    np.save(data, load_builtin("digits").x[:80])  # 64 train rows: one step per epoch
    result = train(quick_config(tmp_path / "r", data=str(data), epochs=None, patience=3))
    assert (result.epoch_budget, result.patience) == (2000, 3)
    assert result.stopped_early and result.epochs_run < 2000
    saved = torch.load(result.run_dir / MODEL_FILE, weights_only=False)["config"]
    assert (saved["epochs"], saved["patience"]) == (2000, 3)  # what applied, not "auto"


def test_resume_continues_identically(tmp_path: Path) -> None:
    straight = train(
        quick_config(tmp_path / "straight", epochs=6, warmup="linear", warmup_epochs=4)
    )
    run = tmp_path / "interrupted"
    train(quick_config(run, epochs=3, warmup="linear", warmup_epochs=4))
    resumed = train(quick_config(run, epochs=6, warmup="linear", warmup_epochs=4), resume=True)
    assert resumed.epochs_run == straight.epochs_run == 6
    s, r = _last_state(straight.run_dir), _last_state(run)
    assert all(torch.equal(s[k], r[k]) for k in s)
    assert [h["val_neg_elbo"] for h in resumed.history] == [
        h["val_neg_elbo"] for h in straight.history
    ]


def test_resume_refuses_other_data(tmp_path: Path) -> None:
    train(quick_config(tmp_path / "r", epochs=1))
    with pytest.raises(ValueError, match="data differs"):
        train(quick_config(tmp_path / "r", epochs=2, data="builtin:breast_cancer"), resume=True)


@pytest.mark.filterwarnings("ignore::vaeserve.training.loop.PosteriorCollapseWarning")
def test_higher_beta_gives_less_kl(tmp_path: Path) -> None:
    low = train(quick_config(tmp_path / "b1", epochs=10, beta=0.5))
    high = train(quick_config(tmp_path / "b4", epochs=10, beta=4.0))
    assert high.history[-1]["val_kl"] < low.history[-1]["val_kl"]


@pytest.mark.filterwarnings("ignore::vaeserve.training.loop.PosteriorCollapseWarning")
def test_free_bits_keep_kl_above_floor(tmp_path: Path) -> None:
    base = train(quick_config(tmp_path / "fb0", epochs=8, beta=8.0))
    floored = train(quick_config(tmp_path / "fb", epochs=8, beta=8.0, free_bits=0.5))
    assert min(floored.history[-1]["val_kl_per_dim"]) > min(base.history[-1]["val_kl_per_dim"])
    assert floored.history[-1]["active_units"] >= base.history[-1]["active_units"]


def test_warmup_schedule_recorded_per_epoch(tmp_path: Path) -> None:
    res = train(quick_config(tmp_path / "w", epochs=6, warmup="linear", warmup_epochs=4))
    betas = [h["beta"] for h in res.history]
    assert betas[0] < betas[2] < betas[-1] == 1.0


def test_posterior_collapse_warns(tmp_path: Path) -> None:
    with pytest.warns(PosteriorCollapseWarning, match="posterior collapse"):
        res = train(quick_config(tmp_path / "collapse", epochs=6, beta=200.0))
    assert res.history[-1]["active_units"] == 0


@pytest.mark.filterwarnings("ignore::vaeserve.training.loop.PosteriorCollapseWarning")
def test_early_stopping_stops(tmp_path: Path) -> None:
    res = train(quick_config(tmp_path / "es", epochs=200, patience=2, lr=0.05))
    assert res.stopped_early and res.epochs_run < 200
    assert res.best_epoch == res.epochs_run - 2


@pytest.mark.filterwarnings("ignore::vaeserve.training.loop.PosteriorCollapseWarning")
def test_conditional_and_one_class_and_bernoulli(tmp_path: Path) -> None:
    cond = train(quick_config(tmp_path / "cvae", epochs=2, condition_on_label=True))
    state = torch.load(cond.run_dir / MODEL_FILE, weights_only=False)
    assert state["cond_dim"] == 10 and state["condition_classes"] == [str(i) for i in range(10)]
    one = train(quick_config(tmp_path / "one", epochs=2, normal_label="3"))
    assert torch.load(one.run_dir / MODEL_FILE, weights_only=False)["val_x"].shape[0] == 37
    x = np.random.default_rng(0).random((300, 12)).astype(np.float32)
    np.save(tmp_path / "unit.npy", x)
    bern = train(
        quick_config(
            tmp_path / "bern", epochs=2, data=str(tmp_path / "unit.npy"), likelihood="bernoulli"
        )
    )
    assert np.isfinite(bern.best_metrics["val_neg_elbo"])
