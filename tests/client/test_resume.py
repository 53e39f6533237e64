"""Interrupted score jobs resume with every input row exactly once in the output.

In-process: a job stopped between writing a chunk and committing it (the worst moment) resumes
for every output format. Out of process: a `vae-server` killed mid-job, and a client killed or
interrupted mid-job, both finish with `--resume`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.client.conftest import MODEL, VENV_BIN, ServerProcess, client_env, free_port
from tests.client.helpers import read_output, read_rejects, write_inputs
from vaeserve.client import VaeClient, VaeClientError
from vaeserve.client import checkpoint as jobs_module
from vaeserve.client.checkpoint import checkpoint_path
from vaeserve.client.job_summary import JobInterrupted
from vaeserve.client.jobs import ScoreJob, run_score_job


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, digits) -> dict[str, Path]:
    x, names, labels = digits
    x = x.copy()
    x[[10, 700, 1500], 5] = np.nan  # three rejects, so rejects resume too
    return write_inputs(tmp_path_factory.mktemp("resume_inputs"), x, names, labels)


@pytest.fixture(scope="module")
def reference(client: VaeClient, digits) -> np.ndarray:
    (r,) = client.score([digits[0]], model=MODEL)
    return r.kl


def check_exactly_once(out: Path, rejects: Path, reference: np.ndarray, id_column: str) -> None:
    """Every input row once, in order, in the output or the rejects file; scores are right."""
    table = read_output(out)
    ids = table.column(id_column).to_pylist()
    rejected = [r[id_column if id_column == "row" else "id"] for r in read_rejects(rejects)]
    if id_column == "row":
        rejected = [int(r) for r in rejected]
        everything = sorted(ids + rejected)
        assert everything == list(range(1797))
        assert ids == sorted(ids)
        index = np.array(ids)
    else:
        assert sorted(ids + rejected) == [f"id{i:05d}" for i in range(1797)]
        assert ids == sorted(ids)
        index = np.array([int(i[2:]) for i in ids])
    assert sorted(rejected) == (
        [10, 700, 1500] if id_column == "row" else ["id00010", "id00700", "id01500"]
    )
    kl = table.column("kl").to_numpy()
    np.testing.assert_allclose(kl, reference[index], rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("in_fmt", "out_fmt"), [("csv", "csv"), ("parquet", "parquet"), ("npy", "jsonl")]
)
@pytest.mark.parametrize("stop_at", [2, 9])
def test_job_stopped_before_a_commit_resumes_exactly_once(
    client: VaeClient,
    inputs,
    reference,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_fmt: str,
    out_fmt: str,
    stop_at: int,
) -> None:
    out = tmp_path / f"out.{out_fmt}"
    id_column = None if in_fmt == "npy" else "id"
    job = ScoreJob(
        input=str(inputs[in_fmt]),
        output=str(out),
        model=MODEL,
        id_column=id_column,
        batch_size=100,
        progress=False,
    )
    real = jobs_module._write_checkpoint
    calls = 0

    def stop_before_commit(path: str, ckpt: object) -> None:
        nonlocal calls
        calls += 1
        if calls == stop_at:  # the chunk is written and flushed, but not committed
            raise KeyboardInterrupt
        real(path, ckpt)  # type: ignore[arg-type]

    monkeypatch.setattr(jobs_module, "_write_checkpoint", stop_before_commit)
    with pytest.raises(JobInterrupted) as caught:
        run_score_job(client, job)
    assert "--resume" in caught.value.message
    ckpt = json.loads(Path(checkpoint_path(str(out))).read_text())
    assert ckpt["rows_done"] == (stop_at - 2) * 100
    monkeypatch.setattr(jobs_module, "_write_checkpoint", real)

    with pytest.raises(VaeClientError, match="--resume"):  # neither resumed nor overwritten
        run_score_job(client, job)
    job.resume = True
    summary = run_score_job(client, job)
    assert summary.complete
    assert summary.resumed_at == (ckpt["rows_done"] or None)
    assert (summary.rows, summary.scored, summary.rejected) == (1797, 1794, 3)
    assert not Path(checkpoint_path(str(out))).exists()
    check_exactly_once(out, tmp_path / "out.rejects.csv", reference, id_column or "row")


def test_resume_refuses_a_different_job(client: VaeClient, inputs, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out.csv"
    job = ScoreJob(input=str(inputs["csv"]), output=str(out), model=MODEL, batch_size=100)
    real = jobs_module._write_checkpoint
    calls = 0

    def stop(path: str, ckpt: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt
        real(path, ckpt)  # type: ignore[arg-type]

    monkeypatch.setattr(jobs_module, "_write_checkpoint", stop)
    with pytest.raises(JobInterrupted):
        run_score_job(client, job)
    monkeypatch.setattr(jobs_module, "_write_checkpoint", real)
    changed = ScoreJob(**{**job.__dict__, "resume": True, "kl_per_dim": True})
    with pytest.raises(VaeClientError, match="kl_per_dim"):
        run_score_job(client, changed)
    other_input = ScoreJob(**{**job.__dict__, "resume": True, "input": str(inputs["parquet"])})
    with pytest.raises(VaeClientError, match="input"):
        run_score_job(client, other_input)
    other_model = ScoreJob(**{**job.__dict__, "resume": True, "model": "other"})
    with pytest.raises(VaeClientError, match="model"):
        run_score_job(client, other_model)
    fresh = ScoreJob(**{**job.__dict__, "overwrite": True, "progress": False})
    assert run_score_job(client, fresh).complete


def _feed(proc: subprocess.Popen[bytes], data: bytes, pieces: int = 10) -> None:
    """Write to the child's stdin in pieces (a live feed), ignoring a child that has gone."""
    assert proc.stdin is not None
    step = max(1, len(data) // pieces)
    with contextlib.suppress(BrokenPipeError):
        for i in range(0, len(data), step):
            proc.stdin.write(data[i : i + step])
            proc.stdin.flush()


def _finish(proc: subprocess.Popen[bytes]) -> bytes:
    """Close the child's stdin, wait for it and return its stderr."""
    assert proc.stdin is not None and proc.stderr is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    err = proc.stderr.read()
    proc.wait(timeout=300)
    return err


def _wait_for_rows(ckpt: Path, rows: int, proc: subprocess.Popen[bytes]) -> int:
    """Poll the checkpoint until it records `rows` committed rows (no timing is asserted)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ckpt.exists():
            try:
                done = json.loads(ckpt.read_text())["rows_done"]
            except (json.JSONDecodeError, OSError):
                done = 0
            if done >= rows:
                return int(done)
        assert proc.poll() is None, "the client exited early"
        time.sleep(0.05)
    raise AssertionError(f"the job never committed {rows} rows")


def _score_cmd(port: int, out: Path, *extra: str) -> list[str]:
    return [
        str(VENV_BIN / "vae-client"),
        "score",
        "-",
        "-o",
        str(out),
        "-m",
        MODEL,
        "--id-column",
        "id",
        "--batch-size",
        "50",
        "--server",
        f"127.0.0.1:{port}",
        *extra,
    ]


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a runner that started the tests in the background (SIGINT
    ignored, which children inherit and vae-client keeps) must not change what is tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_job(port: int, out: Path, data: bytes, *extra: str) -> subprocess.Popen[bytes]:
    """A `vae-client score -` child fed the first 1000 CSV rows, once it has committed 300."""
    proc = subprocess.Popen(
        _score_cmd(port, out, *extra),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=client_env(),
        preexec_fn=_default_sigint,
    )
    _feed(proc, b"".join(data.splitlines(keepends=True)[:1001]))
    _wait_for_rows(Path(checkpoint_path(str(out))), 300, proc)
    return proc


def _rest(data: bytes) -> bytes:
    """The CSV rows after the first 1000 (what `_start_job` did not feed)."""
    return b"".join(data.splitlines(keepends=True)[1001:])


def _resume(port: int, out: Path, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """`vae-client score - --resume` over the whole input, to completion."""
    return subprocess.run(
        _score_cmd(port, out, "--resume"),
        input=data,
        capture_output=True,
        env=client_env(),
        timeout=300,
    )


@pytest.mark.slow
def test_server_killed_mid_job_then_resume_gives_exactly_once(
    model_repo: Path, inputs, reference, tmp_path: Path
) -> None:
    port = free_port()
    server = ServerProcess(model_repo, port, tmp_path / "server.log").start()
    out = tmp_path / "out.csv"
    data = inputs["csv"].read_bytes()
    try:
        proc = _start_job(port, out, data, "--retries", "0")
        done = json.loads(Path(checkpoint_path(str(out))).read_text())["rows_done"]
        assert done < 1797
        server.kill()
        _feed(proc, _rest(data))
        err = _finish(proc)
        assert proc.returncode == 1, err.decode()
        assert b"UNAVAILABLE" in err and b"--resume" in err
        server.start()
        resumed = _resume(port, out, data)
        assert resumed.returncode == 0, resumed.stderr.decode()
        assert b"resumed at row" in resumed.stderr
    finally:
        server.stop()
    check_exactly_once(out, tmp_path / "out.rejects.csv", reference, "id")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_client_stopped_mid_job_then_resume_gives_exactly_once(
    target: str, inputs, reference, tmp_path: Path, sig: signal.Signals
) -> None:
    port = int(target.rsplit(":", 1)[1])
    out = tmp_path / "out.jsonl"
    data = inputs["csv"].read_bytes()
    proc = _start_job(port, out, data)
    proc.send_signal(sig)
    err = _finish(proc)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err.decode()
        assert b"interrupted after" in err and b"--resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    resumed = _resume(port, out, data)
    assert resumed.returncode == 0, resumed.stderr.decode()
    check_exactly_once(out, tmp_path / "out.rejects.csv", reference, "id")


@pytest.mark.slow
def test_job_rides_out_a_server_restart_with_retries(
    model_repo: Path, inputs, reference, tmp_path: Path
) -> None:
    """With retries the job reconnects on its own and needs no --resume."""
    port = free_port()
    server = ServerProcess(model_repo, port, tmp_path / "server.log").start()
    out = tmp_path / "out.parquet"
    data = inputs["csv"].read_bytes()
    try:
        proc = _start_job(port, out, data, "--retries", "30")
        server.kill()
        server.start()
        _feed(proc, _rest(data))
        err = _finish(proc)
        assert proc.returncode == 0, err.decode()
    finally:
        server.stop()
    check_exactly_once(out, tmp_path / "out.rejects.csv", reference, "id")
