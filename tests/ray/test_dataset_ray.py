"""`--engine ray` on a real two-node Ray cluster (tests/ray/cluster.py): both ways of running
the model equal `vae-client score` on every file with both nodes doing work; a Ray Dataset
scored with score_dataset; a worker and a driver killed mid-job, then every row exactly once;
bad input, an unreachable cluster and missing models give clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.client.conftest import VENV_BIN, ServerProcess, client_env
from tests.client.helpers import invoke
from tests.ray.checks import by_file, check_committed, check_exactly_once, markers
from tests.ray.cluster import free_port
from tests.ray.conftest import NAN_ROWS, write_rows
from tests.ray.test_dataset_local import ALL_IDS, NAN_IDS, assert_matches_reference
from vaeserve.client import ConnectionOptions
from vaeserve.client.dataset_job import DatasetJob, run_dataset_job

pytestmark = pytest.mark.slow

KILL_FILES = 10


def wait_for(what: Callable[[], Any], timeout: float, message: str) -> Any:
    """Poll until `what()` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out: {message}")


def alive(pid: int) -> bool:
    """True while a process runs (a zombie is not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def served(server: ServerProcess) -> str:
    """HOST:PORT of a vae-server child process."""
    return f"127.0.0.1:{server.port}"


def half_written(out: Path) -> list[Path]:
    """Output files of attempts in progress (a Parquet output's spool)."""
    return [p for p in (out / "_temporary").glob("*/*.spool.arrows")]


@pytest.fixture(scope="module")
def ten_files(tmp_path_factory: pytest.TempPathFactory, digit_rows: np.ndarray) -> Path:
    """The digits as KILL_FILES Parquet files: enough parts to stop a job in the middle."""
    folder = tmp_path_factory.mktemp("ten")
    bounds = np.linspace(0, len(digit_rows), KILL_FILES + 1).astype(int)
    for k in range(KILL_FILES):
        write_rows(folder / f"f{k:02d}.parquet", digit_rows[bounds[k] : bounds[k + 1]], bounds[k])
    return folder


@pytest.fixture
def server_process(tmp_path: Path, model_repo: Path) -> Iterator[ServerProcess]:
    """vae-server as a child process that a test can pause (SIGSTOP) to catch a job mid-part."""
    server = ServerProcess(model_repo, free_port(), tmp_path / "server.log").start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


@pytest.mark.parametrize("mode", ["server", "in-process"])
def test_ray_on_two_nodes_equals_vae_client_score(
    mode: str,
    ray_address: str,
    tmp_path: Path,
    dataset: Path,
    target: str,
    model_dir: Path,
    reference: dict[str, pa.Table],
) -> None:
    import ray

    out = tmp_path / "out"
    job = DatasetJob(
        inputs=[str(dataset)],
        output=str(out),
        engine="ray",
        ray_address=ray_address,
        id_column="id",
        workers=2,  # 1 CPU each on two 1-CPU nodes: one actor per node
        rows_per_part=100,  # 16 parts, so both actors get several
        model_dir=str(model_dir) if mode == "in-process" else None,
    )
    summary = run_dataset_job(job, ConnectionOptions(target=target))
    assert_matches_reference(out, reference)
    check_exactly_once(out, ALL_IDS, NAN_IDS)
    assert (summary.engine, summary.rows, summary.rejected) == ("ray", 1797, 3)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    worked = {r.node for r in markers(out)}
    assert worked == nodes and len(nodes) == 2, "both nodes score parts"
    assert {w["node"] for w in summary.workers} == nodes


EXPLAIN_COLUMNS = ("feature", "nll", "excess", "value", "reconstruction")


def test_score_dataset_chains_into_a_ray_pipeline(
    ray_address: str, dataset: Path, model_dir: Path, target: str, reference: dict[str, pa.Table]
) -> None:
    import ray

    from vaeserve.client.ray_dataset import score_dataset

    files = [str(dataset / "a.parquet"), str(dataset / "b.parquet")]
    expected = pa.concat_tables([reference[f] for f in files])
    rows = ray.data.from_arrow([pq.read_table(f) for f in files])
    explained = []
    for source in ({"model_dir": str(model_dir)}, {"server": target}):
        scored = score_dataset(rows, workers=1, batch_size=128, explain=2, **source)
        table = pa.concat_tables(ray.get(scored.to_arrow_refs()))
        table = table.sort_by("id")
        top = [c for c in table.column_names if c.startswith("top_")]
        assert top[:5] == [f"top_{c}_1" for c in EXPLAIN_COLUMNS]
        explained.append(table.select(top))
        rejected = table.filter(table.column("reject_reason").is_valid())
        assert rejected.column("id").to_pylist() == [f"id{i:05d}" for i in NAN_ROWS[:2]]
        assert rejected.column("kl").null_count == 2
        kept = table.filter(table.column("reject_reason").is_null())
        assert kept.column("id").equals(expected.column("id"))
        for name in ("kl", "recon_nll", "neg_elbo", "p_value", "is_anomaly"):
            assert kept.column(name).equals(expected.column(name)), name
    # explanations in-process equal the server's (rejected rows have none)
    assert explained[0].equals(explained[1])
    assert explained[0].column("top_feature_1").null_count == 2


def test_a_killed_worker_is_replaced_and_every_row_is_written_once(
    ray_address: str, tmp_path: Path, ten_files: Path, server_process: ServerProcess
) -> None:
    out = tmp_path / "out"
    job = DatasetJob(
        inputs=[str(ten_files)],
        output=str(out),
        engine="ray",
        ray_address=ray_address,
        id_column="id",
        workers=1,
        batch_size=32,
    )
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["summary"] = run_dataset_job(job, ConnectionOptions(target=served(server_process)))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    server = server_process.proc
    assert server is not None
    try:
        wait_for(lambda: markers(out) or not thread.is_alive(), 240, "a first committed part")
        assert thread.is_alive(), box.get("error")
        os.kill(server.pid, signal.SIGSTOP)  # the worker now waits inside its next part
        time.sleep(1.0)
        committed = markers(out)
        attempts = half_written(out)
        victim = committed[0].pid
        os.kill(victim, signal.SIGKILL)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    assert len(committed) < KILL_FILES, "the job was stopped with parts still to do"
    assert attempts, "the worker was killed in the middle of a part"
    check_exactly_once(out, ALL_IDS, NAN_IDS)
    pids = {r.pid for r in markers(out)}
    assert victim in pids and len(pids) >= 2, "a restarted actor finished the job"
    assert box["summary"].parts_done == KILL_FILES and not box["summary"].failed
    print(  # the evidence, with pytest -s
        f"worker {victim} killed with {len(committed)}/{KILL_FILES} parts committed and "
        f"{len(attempts)} half written; finished by workers {sorted(pids)}; "
        f"{len(ALL_IDS)} ids once each"
    )


def test_a_killed_driver_resumes_with_every_row_written_once(
    ray_address: str, tmp_path: Path, ten_files: Path, server_process: ServerProcess
) -> None:
    out = tmp_path / "out"
    target = served(server_process)
    command = [str(VENV_BIN / "vae-client"), "score", str(ten_files), "-o", str(out)]
    command += ["--engine", "ray", "--ray-address", ray_address, "--server", target]
    command += ["--id-column", "id", "--workers", "1", "--batch-size", "32", "-q"]
    log = tmp_path / "driver.log"
    with open(log, "wb") as f:
        driver = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=client_env())
    server = server_process.proc
    assert server is not None
    try:
        wait_for(lambda: markers(out) or driver.poll() is not None, 240, "a committed part")
        assert driver.poll() is None, log.read_text()
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(1.0)
        committed = markers(out)
        driver.kill()
        driver.wait()
        left = half_written(out)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert len(committed) < KILL_FILES and not (out / "_SUCCESS").exists()
    assert left, "the driver died with a part half written"
    orphan = committed[0].pid
    wait_for(lambda: not alive(orphan), 120, "Ray to end the dead driver's worker")
    stray = check_committed(out, settled=False)  # whatever the dead run left, markers vouch

    job = DatasetJob(
        inputs=[str(ten_files)],
        output=str(out),
        engine="ray",
        ray_address=ray_address,
        id_column="id",
        resume=True,
    )
    summary = run_dataset_job(job, ConnectionOptions(target=target))
    assert summary.parts_skipped >= len(committed)
    assert summary.parts_done == KILL_FILES
    check_exactly_once(out, ALL_IDS, NAN_IDS)
    print(  # the evidence, with pytest -s
        f"driver killed with {len(committed)}/{KILL_FILES} parts committed, {len(left)} half "
        f"written, {len(stray)} part files without a marker; the resume skipped "
        f"{summary.parts_skipped} parts and scored {KILL_FILES - summary.parts_skipped}; "
        f"{len(ALL_IDS)} ids once each"
    )


def test_the_cli_on_ray_reports_a_bad_file_and_finishes_after_it_is_fixed(
    ray_address: str, tmp_path: Path, dataset: Path, model_dir: Path, digit_rows: np.ndarray
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("a.parquet", "d.parquet"):
        (folder / name).write_bytes((dataset / name).read_bytes())
    (folder / "b.parquet").write_bytes(b"garbage")
    out = tmp_path / "out"
    args = ["score", str(folder), "-o", str(out), "--engine", "ray", "--ray-address", ray_address]
    args += ["--model-dir", str(model_dir), "--id-column", "id", "--workers", "1"]
    result = invoke(args)
    assert result.exit_code == 1
    assert "1 of 3 parts could not be scored" in result.output
    assert "b.parquet: not a readable Parquet file" in result.output
    assert "2 of 3 parts" in result.output  # the summary, printed before the error
    write_rows(folder / "b.parquet", digit_rows[500:1000], 500)
    result = invoke([*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "2 parts were done before" in result.output
    produced = by_file(out)
    ids = [i for t in produced.values() for i in t.column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == 1497 - 2  # rows 0..999 and 1300..1796, two NaN


def test_unreachable_clusters_and_missing_models_fail_fast_and_write_nothing(
    tmp_path: Path, dataset: Path, model_dir: Path, model_repo: Path
) -> None:
    out = tmp_path / "out"
    nobody = f"127.0.0.1:{free_port()}"
    command = [str(VENV_BIN / "vae-client"), "score", str(dataset), "-o", str(out)]
    env = client_env()
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    proc = subprocess.run(
        [*command, "--engine", "ray", "--ray-address", nobody, "--model-dir", str(model_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert f"cannot reach a Ray cluster at {nobody}" in proc.stderr
    assert time.monotonic() - started < 60
    proc = subprocess.run(
        [*command, "--engine", "ray", "--model-repo", str(model_repo), "-m", "digits:3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "no version '3' of model 'digits'; it has versions [1]" in proc.stderr
    assert not out.exists()
