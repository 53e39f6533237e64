"""In-process scoring gives the server's numbers bit for bit: ModelScorer against vae-server on
the same rows, a row's scores whatever batch it is in and however many threads score it, and
`vae-client score --model-dir` against `vae-client score --server` on the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.client.helpers import invoke
from tests.ray.conftest import FILES
from vaeserve.client import VaeClient, VaeClientError
from vaeserve.client.local_model import LocalModelClient
from vaeserve.common.manifest import ManifestError
from vaeserve.common.model_scorer import ModelScorer, resolve_model_dir

SCORES = ("kl", "recon_nll", "neg_elbo", "p_value", "is_anomaly", "kl_per_dim")


@pytest.fixture(scope="module")
def clean_rows(digit_rows: np.ndarray) -> np.ndarray:
    return digit_rows[np.isfinite(digit_rows).all(axis=1)]


@pytest.mark.parametrize(("score", "threshold"), [(None, None), ("kl", None), ("recon_nll", 150.0)])
def test_in_process_scores_equal_the_servers(
    model_dir: Path, target: str, clean_rows: np.ndarray, score: str | None, threshold: float | None
) -> None:
    scorer = ModelScorer.open(model_dir)
    local = scorer.score(clean_rows, score=score, threshold=threshold)
    with VaeClient(target) as client:
        (remote,) = client.score(
            [clean_rows], model="digits", score=score, threshold=threshold, include_kl_per_dim=True
        )
    for name in SCORES:
        a, b = getattr(local, name), getattr(remote, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert (local.score, local.threshold) == (remote.score, remote.threshold)
    assert 0 < local.is_anomaly.sum() < len(clean_rows)  # the flag is exercised both ways


def test_scores_do_not_depend_on_the_batch_or_the_thread_count(
    model_dir: Path, clean_rows: np.ndarray
) -> None:
    """The server merges requests into dynamic batches and runs one thread per core: a row's
    scores must not change with either, or in-process scores could not equal the server's."""
    one_thread = ModelScorer.open(model_dir, threads=1)
    reference = one_thread.score(clean_rows)
    for threads in (1, 2):
        scorer = ModelScorer.open(model_dir, threads=threads)
        for size in (1, 7, 256, len(clean_rows)):
            parts = [
                scorer.score(clean_rows[i : i + size]) for i in range(0, len(clean_rows), size)
            ]
            for name in SCORES:
                joined = np.concatenate([getattr(p, name) for p in parts])
                assert np.array_equal(joined, getattr(reference, name)), (threads, size, name)


def test_model_folders_resolve_and_missing_ones_say_what_exists(model_repo: Path) -> None:
    assert resolve_model_dir(model_repo, "digits") == model_repo / "digits" / "1"
    assert resolve_model_dir(model_repo, "digits:1") == model_repo / "digits" / "1"
    assert resolve_model_dir(model_repo) == model_repo / "digits" / "1"
    with pytest.raises(ManifestError, match=r"no version '7' of model 'digits'.*\[1\]"):
        resolve_model_dir(model_repo, "digits:7")
    with pytest.raises(ManifestError, match=r"no model 'nope'.*\['digits'\]"):
        resolve_model_dir(model_repo, "nope")
    with pytest.raises(VaeClientError, match=r"no manifest\.json"):
        LocalModelClient(model_repo / "digits")


def test_local_client_refuses_rows_as_the_server_does(model_dir: Path, target: str) -> None:
    rows = np.ones((3, 64), np.float32)
    rows[1, 0] = np.inf
    with LocalModelClient(model_dir) as local, VaeClient(target) as remote:
        (a,) = local.score([rows], raise_errors=False)
        (b,) = remote.score([rows], model="digits", raise_errors=False)
        assert a.error is not None and b.error is not None
        assert a.error.code == b.error.code
        with pytest.raises(VaeClientError, match="expects 64"):
            list(local.score([np.ones((2, 5), np.float32)]))
        with pytest.raises(VaeClientError, match="holds model digits:1, not digits:2"):
            local.model_info("digits:2")


def test_vae_client_score_with_model_dir_writes_the_servers_file(
    tmp_path: Path, dataset: Path, model_dir: Path, target: str
) -> None:
    source = dataset / FILES[1][0]  # with a NaN row: rejects match too
    served, local = tmp_path / "served.parquet", tmp_path / "local.parquet"
    common = ["score", str(source), "--id-column", "id", "-q"]
    result = invoke([*common, "-o", str(served)], target)
    assert result.exit_code == 0, result.output
    result = invoke([*common, "-o", str(local), "--model-dir", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(local).equals(pq.read_table(served))
    assert (tmp_path / "local.rejects.csv").read_text() == (
        tmp_path / "served.rejects.csv"
    ).read_text()
