"""Dataset jobs on the local engine (no Ray): the same scores as `vae-client score` on each file,
one output per file or part with ids, inputs named every way, resume rules, bad inputs, and
that neither this engine nor the CLI imports Ray."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.client.helpers import invoke
from tests.ray.checks import by_file, check_exactly_once, markers, rejected_ids
from tests.ray.conftest import FILES, NAMES, NAN_ROWS, write_rows
from tests.server.synth import write_synthetic_model
from vaeserve.client import ConnectionOptions, VaeClient, VaeClientError
from vaeserve.client.dataset_job import DatasetJob, run_dataset_job
from vaeserve.client.dataset_summary import DatasetIncomplete
from vaeserve.client.jobs import ScoreJob, run_score_job
from vaeserve.server import VaeServer

ALL_IDS = [f"id{i:05d}" for i in range(1797)]
NAN_IDS = [f"id{i:05d}" for i in NAN_ROWS]


def assert_matches_reference(out: Path, reference: dict[str, pa.Table]) -> None:
    """Each input file's output rows equal the single-file job's, bit for bit."""
    produced = by_file(out)
    assert sorted(produced) == sorted(reference)
    for path, table in produced.items():
        assert table.equals(reference[path]), path


def test_server_mode_equals_vae_client_score(
    tmp_path: Path, dataset: Path, target: str, reference: dict[str, pa.Table]
) -> None:
    out = tmp_path / "out"
    job = DatasetJob(inputs=[str(dataset)], output=str(out), id_column="id", progress=False)
    summary = run_dataset_job(job, ConnectionOptions(target=target))
    assert_matches_reference(out, reference)
    check_exactly_once(out, ALL_IDS, NAN_IDS)
    assert (summary.files, summary.parts, summary.rows, summary.rejected) == (4, 4, 1797, 3)
    assert summary.scored == 1794 and summary.complete
    assert summary.backend == f"server {target}"
    manifest = json.loads((out / "_manifest.json").read_text())
    rows = {Path(p["input"]).name: p["rows"] for p in manifest["parts"]}
    assert rows == {Path(name).name: stop - start for name, start, stop in FILES}


def test_in_process_cli_equals_vae_client_score(
    tmp_path: Path, dataset: Path, model_dir: Path, reference: dict[str, pa.Table]
) -> None:
    out, summary_file = tmp_path / "out", tmp_path / "summary.json"
    args = ["score", str(dataset), "-o", str(out), "--model-dir", str(model_dir)]
    result = invoke([*args, "--id-column", "id", "-q", "--summary-json", str(summary_file)])
    assert result.exit_code == 0, result.output
    assert_matches_reference(out, reference)
    check_exactly_once(out, ALL_IDS, NAN_IDS)
    summary = json.loads(summary_file.read_text())
    assert summary["engine"] == "local" and summary["backend"].startswith("in-process")
    assert (summary["rows"], summary["rejected"], summary["complete"]) == (1797, 3, True)


def test_without_an_id_column_file_and_row_name_every_row(
    tmp_path: Path, dataset: Path, model_dir: Path
) -> None:
    out = tmp_path / "out"
    job = DatasetJob(inputs=[str(dataset)], output=str(out), model_dir=str(model_dir))
    run_dataset_job(job)
    keys = []
    for path, table in by_file(out).items():
        assert table.column_names[:3] == ["file", "row", "kl"]
        assert set(table.column("file").to_pylist()) == {path}
        keys += [(path, r) for r in table.column("row").to_pylist()]
    rejects = (out / "_rejects.csv").read_text().splitlines()
    assert rejects[0] == "file,row,id,reason"
    keys += [(line.split(",")[0], int(line.split(",")[1])) for line in rejects[1:]]
    expected = [(str(dataset / n), r) for n, start, stop in FILES for r in range(stop - start)]
    assert sorted(keys) == sorted(expected)


def test_rows_per_part_cuts_parquet_files_at_row_groups(
    tmp_path: Path, dataset: Path, model_dir: Path, reference: dict[str, pa.Table]
) -> None:
    out = tmp_path / "out"
    job = DatasetJob(
        inputs=[str(dataset)],
        output=str(out),
        id_column="id",
        model_dir=str(model_dir),
        rows_per_part=150,  # row groups of 100 rows: parts of 200 (the last shorter)
        output_format="csv",
    )
    summary = run_dataset_job(job)
    ranges = [(Path(r.input).name, r.start, r.stop) for r in markers(out)]
    assert ranges[:3] == [("a.parquet", 0, 200), ("a.parquet", 200, 400), ("a.parquet", 400, 500)]
    assert ("c.csv", 0, None) in ranges  # CSV files are not cut
    assert summary.parts == len(ranges) == 3 + 3 + 1 + 3
    assert all(p.suffix == ".csv" for p in out.glob("part-*"))
    for path, table in by_file(out).items():
        ids = table.column("id").to_pylist()
        assert ids == reference[path].column("id").to_pylist()
        kl = table.column("kl").cast(pa.float32()).to_numpy()
        # CSV keeps float32 values exactly (shortest round-trip text)
        assert np.array_equal(kl, reference[path].column("kl").to_numpy())


def test_globs_lists_and_uris_name_the_same_files(
    tmp_path: Path, dataset: Path, model_dir: Path
) -> None:
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# two files\n{dataset / 'a.parquet'}\n{dataset / 'sub' / 'c.csv'}\n")
    cases = {
        "glob": ([str(dataset / "*.parquet")], ["a.parquet", "b.parquet", "d.parquet"]),
        "deep glob": ([str(dataset / "**" / "*.csv")], ["c.csv"]),
        "list": ([f"@{listing}"], ["a.parquet", "c.csv"]),
        "uri": ([f"file://{dataset}"], ["a.parquet", "b.parquet", "d.parquet", "c.csv"]),
    }
    for i, (inputs, names) in enumerate(cases.values()):
        out = tmp_path / f"out{i}"
        target = f"file://{out}" if inputs[0].startswith("file://") else str(out)
        job = DatasetJob(inputs=inputs, output=target, id_column="id", model_dir=str(model_dir))
        run_dataset_job(job)
        assert [Path(r.input).name for r in markers(out)] == names


def test_an_output_folder_inside_the_input_folder_is_not_read_back(
    tmp_path: Path, dataset: Path, model_dir: Path
) -> None:
    folder = tmp_path / "data"
    shutil.copytree(dataset, folder)
    job = DatasetJob(
        inputs=[str(folder)],
        output=str(folder / "scores"),
        id_column="id",
        model_dir=str(model_dir),
    )
    run_dataset_job(job)
    job.overwrite = True
    assert run_dataset_job(job).files == 4


def test_a_finished_job_is_neither_replaced_nor_resumed_by_accident(
    tmp_path: Path, dataset: Path, model_dir: Path
) -> None:
    out = tmp_path / "out"
    job = DatasetJob(
        inputs=[str(dataset)], output=str(out), id_column="id", model_dir=str(model_dir)
    )
    run_dataset_job(job)
    first = {p.name: p.read_bytes() for p in out.glob("part-*")}
    with pytest.raises(VaeClientError, match="pass --resume to finish it or --overwrite"):
        run_dataset_job(job)
    job.resume = True
    with pytest.raises(VaeClientError, match="nothing to resume, the job finished"):
        run_dataset_job(job)
    job.resume, job.overwrite = False, True
    assert run_dataset_job(job).parts_skipped == 0
    assert {p.name: p.read_bytes() for p in out.glob("part-*")} == first
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(VaeClientError, match="not a vae-client job's output"):
        run_dataset_job(
            DatasetJob(
                inputs=[str(dataset)], output=str(tmp_path / "other"), model_dir=str(model_dir)
            )
        )


def test_bad_files_fail_alone_and_a_resume_finishes_once_they_are_fixed(
    tmp_path: Path, dataset: Path, model_dir: Path, digit_rows: np.ndarray
) -> None:
    folder = tmp_path / "data"
    shutil.copytree(dataset, folder)
    (folder / "b.parquet").write_bytes(b"PAR1 this is not a parquet file")
    narrow = pa.table({"id": ["x"], **{n: [1.0] for n in NAMES[:60]}})
    pq.write_table(narrow, folder / "e.parquet")
    out = tmp_path / "out"
    job = DatasetJob(
        inputs=[str(folder)], output=str(out), id_column="id", model_dir=str(model_dir)
    )
    with pytest.raises(DatasetIncomplete, match="2 of 5 parts could not be scored") as caught:
        run_dataset_job(job)
    failed = {Path(f["input"]).name: f["error"] for f in caught.value.summary.failed}
    assert "not a readable Parquet file" in failed["b.parquet"]
    assert "60 feature columns but the model expects 64" in failed["e.parquet"]
    assert [Path(r.input).name for r in markers(out)] == ["a.parquet", "d.parquet", "c.csv"]
    assert not (out / "_SUCCESS").exists() and not (out / "_temporary").exists()
    before = {r.output: r.sha256 for r in markers(out)}

    job.resume = True
    job.score = "kl"
    with pytest.raises(VaeClientError, match="cannot resume: score differ"):
        run_dataset_job(job)
    job.score = None
    write_rows(folder / "b.parquet", digit_rows[500:1000], 500)  # fixed in place
    (folder / "e.parquet").unlink()  # dropped
    summary = run_dataset_job(job)
    assert (summary.parts_skipped, summary.parts_done, summary.parts) == (3, 4, 4)
    assert {r.output: r.sha256 for r in markers(out) if r.output in before} == before
    check_exactly_once(out, ALL_IDS, NAN_IDS)

    (out / "_SUCCESS").unlink()  # as if interrupted before the end
    write_rows(folder / "a.parquet", digit_rows[:500], 0, row_group=50)  # changed after scoring
    with pytest.raises(VaeClientError, match=r"a\.parquet \(rows 0\.\.\) was scored .* changed"):
        run_dataset_job(job)


def test_missing_models_and_empty_inputs_are_clear_errors(
    tmp_path: Path, dataset: Path, model_repo: Path, target: str
) -> None:
    out = tmp_path / "out"
    job = DatasetJob(inputs=[str(dataset)], output=str(out), model_repo=str(model_repo))
    job.model = "digits:9"
    with pytest.raises(VaeClientError, match=r"no version '9' of model 'digits'.*\[1\]") as e:
        run_dataset_job(job)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    job = DatasetJob(inputs=[str(dataset)], output=str(out), model="digits:9")
    with pytest.raises(VaeClientError) as e:
        run_dataset_job(job, ConnectionOptions(target=target))
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert not out.exists()  # nothing is written before the model is known
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no data")
    job = DatasetJob(inputs=[str(tmp_path / "empty")], output=str(out), model_repo=str(model_repo))
    with pytest.raises(VaeClientError, match="no CSV or Parquet files here"):
        run_dataset_job(job)
    result = invoke(["score", "-", "--engine", "ray", "-o", str(out), "--model-repo", "x"])
    assert result.exit_code == 1 and "not stdin" in result.output
    assert rejected_ids(out) == []


def test_the_cli_and_the_local_engine_never_import_ray(
    tmp_path: Path, dataset: Path, model_dir: Path
) -> None:
    """Ray is an optional extra: vae-client, the local engine and the server run without it."""
    script = f"""
import sys
from click.testing import CliRunner
import vaeserve.client, vaeserve.server
from vaeserve.client.cli import cli
result = CliRunner().invoke(cli, ["score", {str(dataset)!r}, "-o", {str(tmp_path / "out")!r},
    "--model-dir", {str(model_dir)!r}, "--id-column", "id", "-q"])
assert result.exit_code == 0, result.output
result = CliRunner().invoke(cli, ["score", {str(dataset / "a.parquet")!r}, "-o",
    {str(tmp_path / "a.csv")!r}, "--model-dir", {str(model_dir)!r}, "-q"])
assert result.exit_code == 0, result.output
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print("ray modules:", loaded)
sys.exit(1 if loaded else 0)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ray modules: []" in proc.stdout
    assert len(markers(tmp_path / "out")) == 4


def test_conditional_models_read_their_label_column(tmp_path: Path, cond_server: VaeServer) -> None:
    """The synthetic conditional model (3 classes) in-process equals the server's copy; rows
    with unknown labels are rejects, as in the single-file job."""
    model_dir = write_synthetic_model(
        tmp_path / "repo", "cond", 1, input_dim=8, latent_dim=2, cond_dim=3, seed=2
    )
    rng = np.random.default_rng(5)
    folder = tmp_path / "data"
    folder.mkdir()
    labels = np.array(["class0", "class1", "class2", "nope"])
    for k in range(2):
        x = rng.normal(size=(300, 8)).astype(np.float32)
        table = pa.table(
            {
                "id": [f"c{k}-{i:03d}" for i in range(300)],
                **{f"f{j}": x[:, j] for j in range(8)},
                "label": labels[rng.integers(0, 4, 300)],
            }
        )
        pacsv.write_csv(table, folder / f"c{k}.csv")
    out = tmp_path / "out"
    job = DatasetJob(
        inputs=[str(folder)],
        output=str(out),
        id_column="id",
        condition_column="label",
        model_dir=str(model_dir),
    )
    summary = run_dataset_job(job)
    assert 0 < summary.rejected < 600 and summary.rejected + summary.scored == 600
    with VaeClient(f"127.0.0.1:{cond_server.port}") as client:
        for k in range(2):
            single = tmp_path / f"single{k}.parquet"
            run_score_job(
                client,
                ScoreJob(
                    input=str(folder / f"c{k}.csv"),
                    output=str(single),
                    id_column="id",
                    condition_column="label",
                    progress=False,
                ),
            )
            assert by_file(out)[str(folder / f"c{k}.csv")].equals(pq.read_table(single))
    with (out / "_rejects.csv").open() as f:
        reasons = {row["reason"] for row in csv.DictReader(f)}
    assert reasons == {"unknown condition label in column 'label'"}
