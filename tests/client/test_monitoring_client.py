"""Explanations and drift from the client: `VaeClient.score(explain=K)` and `--explain K`
columns in every output format, in-process equal to the server; `VaeClient.drift`; and
`vae-client drift` on held-out rows and on rows of other classes, from a file (encoded by the
server or in-process) and from the server's window.

The model is `digits_split` (tests/conftest.py): all ten digits with 539 rows it never saw.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.client.helpers import invoke, read_output
from tests.conftest import serving
from tests.ray.checks import by_file
from vaeserve.client import VaeClient, VaeClientError
from vaeserve.client.local_model import LocalModelClient
from vaeserve.common.drift import DriftReference
from vaeserve.common.manifest import load_manifest
from vaeserve.export.explain_eval import corrupt
from vaeserve.export.monitoring_figures import Exported
from vaeserve.server import VaeServer

NAMES = [f"f{i}" for i in range(64)]  # the split model's feature names (trained from .npy)
TOP = ("top_feature", "top_nll", "top_excess", "top_value", "top_reconstruction")


@pytest.fixture(scope="module")
def split_server(digits_split: Exported) -> Iterator[VaeServer]:
    """A server on the split digits model with a 64-row drift window."""
    with serving(digits_split.model_dir.parents[1], drift_window_rows=64) as server:
        yield server


@pytest.fixture(scope="module")
def split_target(split_server: VaeServer) -> str:
    return f"127.0.0.1:{split_server.port}"


@pytest.fixture(scope="module")
def corrupted(digits_split: Exported, tmp_path_factory: pytest.TempPathFactory):
    """Held-out rows with one pixel each shifted by 20 training sds, as Parquet with an id
    column, and the name of each row's shifted pixel."""
    manifest = load_manifest(digits_split.model_dir)
    assert manifest.feature_names == NAMES
    scale = np.asarray(manifest.normalisation["scale"])
    x, shifted = corrupt(digits_split.held_out, scale, 20.0, seed=0)
    path = tmp_path_factory.mktemp("corrupted") / "rows.parquet"
    ids = [f"r{i}" for i in range(len(x))]
    pq.write_table(pa.table({"id": ids, **{n: x[:, j] for j, n in enumerate(NAMES)}}), path)
    return path, x, np.asarray(NAMES)[shifted]


def _columns(k: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(1, k + 1) for prefix in TOP]


def test_library_explanations_carry_names(split_target: str, corrupted, digits_split) -> None:
    _, x, shifted = corrupted
    with VaeClient(split_target) as client:
        (plain,) = client.score([x[:50]])
        (explained,) = client.score([x[:50]], explain=3)
        with LocalModelClient(digits_split.model_dir) as local:
            (here,) = local.score([x[:50]], explain=3)
    assert plain.explain is None
    e = explained.explain
    assert e.k == 3 and e.index.shape == (50, 3) and e.names.shape == (50, 3)
    assert e.names.tolist() == np.asarray(NAMES)[e.index].tolist()
    assert (e.names[:, 0] == shifted[:50]).mean() >= 0.9
    # in-process, the same explanation as the server's, bit for bit
    for name in ("index", "names", "nll", "excess", "value", "reconstruction"):
        a, b = getattr(e, name), getattr(here.explain, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_score_explain_columns(fmt: str, tmp_path: Path, split_target: str, corrupted) -> None:
    """--explain 2 writes top_*_1 and top_*_2 after the scores; the top-1 feature of the
    flagged rows names the shifted pixel (measured: 533 of 537 flagged rows)."""
    path, _, shifted = corrupted
    out = tmp_path / f"scores.{fmt}"
    args = ["score", str(path), "-o", str(out), "--id-column", "id", "--explain", "2", "-q"]
    result = invoke(args, split_target)
    assert result.exit_code == 0, result.output
    table = read_output(out)
    assert table.column_names == [
        "id", "kl", "recon_nll", "neg_elbo", "p_value", "is_anomaly", *_columns(2)
    ]  # fmt: skip
    top1 = np.asarray(table.column("top_feature_1").to_pylist())
    flagged = np.asarray(table.column("is_anomaly").to_pylist())
    assert flagged.sum() >= 400 and (top1[flagged] == shifted[flagged]).mean() >= 0.9
    excess = np.asarray(table.column("top_excess_1").to_pylist(), np.float64)
    assert np.all(excess >= np.asarray(table.column("top_excess_2").to_pylist()))


def test_in_process_explanations_equal_the_servers(
    tmp_path: Path, split_target: str, corrupted, digits_split
) -> None:
    """The same --explain job, one file and a dataset folder, on the server and in-process:
    equal outputs (the dataset's local engine runs the parts as Ray actors do)."""
    path, _, _ = corrupted
    folder = tmp_path / "data"
    folder.mkdir()
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 300), folder / "a.parquet")
    pacsv.write_csv(table.slice(300), folder / "b.csv")
    local = ["--model-dir", str(digits_split.model_dir)]
    outputs = {}
    for mode, extra in (("server", []), ("local", local)):
        for kind, source in (("file", path), ("dataset", folder)):
            out = tmp_path / (f"{mode}-{kind}" + (".parquet" if kind == "file" else ""))
            args = ["score", str(source), "-o", str(out), "--id-column", "id", "--explain", "3"]
            result = invoke([*args, "-q", *extra], split_target)
            assert result.exit_code == 0, result.output
            tables = [read_output(out)] if kind == "file" else list(by_file(out).values())
            outputs[mode, kind] = pa.concat_tables(tables).sort_by("id")
    for kind in ("file", "dataset"):
        a, b = outputs["server", kind], outputs["local", kind]
        assert a.column_names[-15:] == _columns(3)
        assert a.equals(b), kind
    assert outputs["server", "dataset"].num_rows == table.num_rows


def test_explain_on_a_model_without_an_explainer_fails_before_scoring(
    tmp_path: Path, cond_server: VaeServer
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,c,d,e,f,g,h,label\n" + "1,2,3,4,5,6,7,8,x\n")
    out = tmp_path / "o.csv"
    args = ["score", str(rows), "-o", str(out), "--condition-column", "label", "--explain", "2"]
    result = invoke(args, f"127.0.0.1:{cond_server.port}")
    assert result.exit_code == 1
    assert "offers no explanations" in result.output and "re-export" in result.output
    assert not out.exists()


def _write_rows(path: Path, x: np.ndarray) -> Path:
    pq.write_table(pa.table({n: x[:, j] for j, n in enumerate(NAMES)}), path)
    return path


@pytest.fixture(scope="module")
def drift_files(digits_split: Exported, tmp_path_factory: pytest.TempPathFactory):
    """All 539 held-out rows in a seeded order, and the held-out zeros and ones only."""
    folder = tmp_path_factory.mktemp("drift")
    order = np.random.default_rng(1).permutation(len(digits_split.held_out))
    two = np.isin(digits_split.labels, ["0", "1"])
    return (
        _write_rows(folder / "held_out.parquet", digits_split.held_out[order]),
        _write_rows(folder / "zeros_ones.parquet", digits_split.held_out[two]),
    )


def test_drift_of_a_file(tmp_path: Path, split_target: str, drift_files, digits_split) -> None:
    """Held-out rows: no drift (exit 0 under --fail-on-drift 0.01); a file of only zeros and
    ones: drift (exit 3), in each window of 64 rows too. Per-window table with --output; the
    statistic equals common.drift's on the same posteriors."""
    held_out, shifted = drift_files
    windows = tmp_path / "windows.csv"
    args = ["drift", str(held_out), "--window", "128", "--fail-on-drift", "0.01", "--json"]
    calm = invoke([*args, "-o", str(windows)], split_target)
    assert calm.exit_code == 0, calm.output
    report = json.loads(calm.stdout)
    assert report["file"]["rows"] == 539 and report["file"]["p_value"] > 0.01
    table = pacsv.read_csv(windows)
    assert table.column("rows").to_pylist() == [128, 128, 128, 128, 27]
    assert table.column("first_row").to_pylist() == [0, 128, 256, 384, 512]
    assert report["windows"] == 5 and report["drifted_windows"] <= 1
    # the whole file's KL is common.drift's on the rows' posteriors (the server's encoder)
    reference = DriftReference.from_manifest(load_manifest(digits_split.model_dir))
    with VaeClient(split_target) as client:
        enc = client.encode(pq.read_table(held_out).to_pandas().to_numpy(np.float32))
    assert report["file"]["kl"] == pytest.approx(reference.measure(enc.mu, enc.logvar).kl)

    drifted = invoke(
        ["drift", str(shifted), "--window", "64", "--fail-on-drift", "0.01"], split_target
    )
    assert drifted.exit_code == 3, drifted.output
    assert "windows      2 of up to 64 rows, 2 with p < 0.01" in drifted.stdout
    assert "p-value" in drifted.stderr and "< 0.01" in drifted.stderr


def test_drift_in_process_and_of_the_servers_window(
    split_server: VaeServer, split_target: str, drift_files, digits_split
) -> None:
    _, shifted = drift_files
    args = ["drift", str(shifted), "--window", "64", "--json"]
    remote = invoke(args, split_target)
    local = invoke([*args, "--model-dir", str(digits_split.model_dir)])
    assert remote.exit_code == local.exit_code == 0, remote.output + local.output
    a, b = json.loads(remote.stdout)["file"], json.loads(local.stdout)["file"]
    assert a["rows"] == b["rows"] == 103
    assert a["kl"] == pytest.approx(b["kl"], rel=1e-4)  # encoder.onnx vs scorer.onnx's mu
    assert a["p_value"] < 0.01 and b["p_value"] < 0.01

    x = pq.read_table(shifted).to_pandas().to_numpy(np.float32)
    with VaeClient(split_target) as client:
        list(client.score([x[:64]]))
        reading = client.drift("digits")
    assert (reading.rows, reading.window_rows) == (64, 64) and reading.p_value < 0.01
    window = invoke(["drift", "--model", "digits", "--fail-on-drift", "0.01"], split_target)
    assert window.exit_code == 3
    assert "window       64 of 64 rows" in window.stdout
    assert f"KL {reading.kl:.4g} nats" in window.stdout


def test_drift_needs_a_reference_and_rows(tmp_path: Path, cond_server: VaeServer) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,c,d,e,f,g,h,label\n1,2,3,4,5,6,7,8,x\n")
    target = f"127.0.0.1:{cond_server.port}"
    result = invoke(["drift", str(rows), "--condition-column", "label"], target)
    assert result.exit_code == 1 and "without a drift reference" in result.output
    with VaeClient(target) as client, pytest.raises(VaeClientError) as exc:
        client.drift()
    assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION
