"""`vae-client` commands against a real server: formats round-trip with the library's scores,
rejects, options, every command, and clear errors for bad files, columns and options."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.client.conftest import MODEL
from tests.client.helpers import invoke, read_output, read_rejects, write_inputs
from vaeserve.client import VaeClient, VaeClientError
from vaeserve.client.jobs import ScoreJob, run_score_job


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, digits) -> dict[str, Path]:
    x, names, labels = digits
    return write_inputs(tmp_path_factory.mktemp("inputs"), x, names, labels)


@pytest.fixture(scope="module")
def reference(client: VaeClient, digits) -> dict[str, np.ndarray]:
    """The server's scores of every digits row, straight from VaeClient.score."""
    (r,) = client.score([digits[0]], model=MODEL, include_kl_per_dim=True)
    return {
        "kl": r.kl,
        "recon_nll": r.recon_nll,
        "neg_elbo": r.neg_elbo,
        "p_value": r.p_value,
        "is_anomaly": r.is_anomaly,
        "kl_per_dim": r.kl_per_dim,
    }


def assert_scores_match(table: pa.Table, reference: dict[str, np.ndarray], rows=None) -> None:
    """Every score column equals the reference.

    Text output keeps every bit (shortest round-trip form); the tolerance only allows for the
    server's own last-bit differences when it batches rows differently.
    """
    index = np.arange(len(reference["kl"])) if rows is None else rows
    for key in ("kl", "recon_nll", "neg_elbo", "p_value"):
        got = table.column(key).to_numpy(zero_copy_only=False)
        assert got.dtype == reference[key].dtype, key
        np.testing.assert_allclose(got, reference[key][index], rtol=1e-6, atol=0, err_msg=key)
    got = table.column("is_anomaly").to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(got, reference["is_anomaly"][index])


@pytest.mark.parametrize("out_fmt", ["csv", "parquet", "jsonl"])
@pytest.mark.parametrize("in_fmt", ["csv", "parquet", "npy"])
def test_score_round_trips_every_format(
    inputs, reference, target: str, tmp_path: Path, in_fmt: str, out_fmt: str
) -> None:
    out = tmp_path / f"scores.{out_fmt}"
    summary = tmp_path / "summary.json"
    args = ["score", str(inputs[in_fmt]), "-o", str(out), "-m", MODEL, "--batch-size", "256"]
    result = invoke([*args, "--summary-json", str(summary)], target)
    assert result.exit_code == 0, result.output
    table = read_output(out)
    assert table.column_names[:6] == ["row", "kl", "recon_nll", "neg_elbo", "p_value", "is_anomaly"]
    np.testing.assert_array_equal(table.column("row").to_numpy(), np.arange(1797))
    assert_scores_match(table, reference)
    stats = json.loads(summary.read_text())
    assert stats["rows"] == stats["scored"] == 1797 and stats["rejected"] == 0
    assert stats["anomalies"] == int(reference["is_anomaly"].sum()) and stats["complete"]
    assert "done: 1,797 rows" in result.stderr
    assert not (tmp_path / "scores.rejects.csv").exists()
    assert not Path(f"{out}.progress.json").exists()


def test_score_from_stdin_to_stdout(inputs, reference, target: str) -> None:
    csv_text = inputs["csv"].read_bytes()
    result = invoke(
        ["score", "-", "-o", "-", "-m", MODEL, "-q", "--format", "jsonl"], target, input=csv_text
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["row"] for r in rows] == list(range(1797))
    got = np.array([r["kl"] for r in rows], np.float32)
    np.testing.assert_allclose(got, reference["kl"], rtol=1e-6)


def test_score_ids_kept_columns_and_per_dim_kl(inputs, reference, target, tmp_path) -> None:
    out = tmp_path / "scores.parquet"
    args = [
        "score",
        str(inputs["parquet"]),
        "-o",
        str(out),
        "-m",
        MODEL,
        "--id-column",
        "id",
        "--keep-columns",
        "--per-dim-kl",
        "--batch-size",
        "300",
    ]
    result = invoke(args, target)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names[0] == "id"
    assert table.column("id").to_pylist()[:2] == ["id00000", "id00001"]
    assert_scores_match(table, reference)
    latent = reference["kl_per_dim"].shape[1]
    per_dim = np.stack([table.column(f"kl_dim_{d}").to_numpy() for d in range(latent)], axis=1)
    np.testing.assert_allclose(per_dim, reference["kl_per_dim"], rtol=1e-5, atol=1e-6)
    assert table.column("label").to_pylist()[:3] == ["0", "1", "2"]
    assert "pixel_0_0" in table.column_names and table.column_names.count("id") == 1


def test_score_options_reach_the_server(client: VaeClient, inputs, target, tmp_path) -> None:
    x = np.load(inputs["npy"])
    threshold = float(np.median(client.score([x], model=MODEL).__next__().recon_nll))
    # The importance samples depend on the batch a row is in: batch as the CLI does (1024).
    parts = list(
        client.score(
            [x[:1024], x[1024:]],
            model=MODEL,
            score="recon_nll",
            threshold=threshold,
            iw_samples=4,
            seed=7,
        )
    )
    is_anomaly = np.concatenate([p.is_anomaly for p in parts])
    iw_nll = np.concatenate([p.iw_nll for p in parts])
    out = tmp_path / "s.csv"
    args = [
        "score",
        str(inputs["npy"]),
        "-o",
        str(out),
        "-m",
        f"{MODEL}:1",
        "--score",
        "recon_nll",
        "--threshold",
        str(threshold),
        "--iw-samples",
        "4",
        "--seed",
        "7",
    ]
    assert invoke(args, target).exit_code == 0
    table = read_output(out)
    np.testing.assert_array_equal(
        table.column("is_anomaly").to_numpy(zero_copy_only=False), is_anomaly
    )
    np.testing.assert_allclose(table.column("iw_nll").to_numpy(), iw_nll, rtol=1e-5)
    assert 0 < is_anomaly.sum() < len(x)
    np.testing.assert_array_equal(
        is_anomaly, np.concatenate([p.recon_nll for p in parts]) > threshold
    )


def test_bad_rows_go_to_the_rejects_file_and_are_counted(
    digits, reference, target: str, tmp_path: Path
) -> None:
    x, names, _ = digits
    lines = ["id," + ",".join(names)]
    for i, row in enumerate(x[:400]):
        values = [repr(float(v)) for v in row]
        if i == 5:
            values[3] = "nan"
        if i == 17:
            values[0] = "inf"
        if i == 33:
            values[10] = ""
        lines.append(f"r{i}," + ",".join(values))
        if i == 99:
            lines.append("short,1,2,3")  # a malformed line between rows 99 and 100
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    summary = tmp_path / "summary.json"
    result = invoke(
        [
            "score",
            str(path),
            "-o",
            str(out),
            "-m",
            MODEL,
            "--id-column",
            "id",
            "--batch-size",
            "64",
            "--summary-json",
            str(summary),
        ],
        target,
    )
    assert result.exit_code == 0, result.output
    rejects = read_rejects(tmp_path / "out.rejects.csv")
    by_id = {r["id"]: r for r in rejects}
    assert set(by_id) == {"r5", "r17", "r33", ""}
    assert by_id["r5"]["row"] == "5" and "pixel_0_3" in by_id["r5"]["reason"]
    assert "inf" in by_id["r17"]["reason"] and "missing" in by_id["r33"]["reason"]
    assert "line 102 has 4 fields" in by_id[""]["reason"]  # header, rows 0-99, then it
    assert "short,1,2,3" in by_id[""]["reason"]
    table = read_output(out)
    good = [i for i in range(400) if i not in (5, 17, 33)]
    assert table.column("id").to_pylist() == [f"r{i}" for i in good]
    assert_scores_match(table, reference, rows=np.array(good))
    stats = json.loads(summary.read_text())
    assert (stats["rows"], stats["scored"], stats["rejected"]) == (400, 397, 4)
    assert "4 rejected" in result.stderr and "out.rejects.csv" in result.stderr


def test_server_limit_errors_stop_the_job_instead_of_rejecting_rows(inputs, target, tmp_path):
    out = tmp_path / "o.csv"
    result = invoke(
        ["score", str(inputs["npy"]), "-o", str(out), "-m", MODEL, "--iw-samples", "100000"], target
    )
    assert result.exit_code == 1
    assert "RESOURCE_EXHAUSTED" in result.stderr and "iw_samples" in result.stderr


def test_output_exists_overwrite_and_resume_rules(inputs, target, tmp_path) -> None:
    out = tmp_path / "o.csv"
    base = ["score", str(inputs["npy"]), "-o", str(out), "-m", MODEL, "-q"]
    assert invoke(base, target).exit_code == 0
    again = invoke(base, target)
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    resumed = invoke([*base, "--resume"], target)
    assert resumed.exit_code == 1 and "nothing to resume" in resumed.stderr
    assert invoke([*base, "--overwrite"], target).exit_code == 0
    assert read_output(out).num_rows == 1797


BAD_CASES = [
    (["score", "{missing}", "-o", "{out}"], "no such file"),
    (["score", "{txt}", "-o", "{out}"], "cannot tell the input format"),
    (["score", "{npy}", "-o", "{tmp}/o.xlsx"], "cannot tell the output format"),
    (["score", "{csv}", "-o", "{out}", "--columns", "pixel_0_0,nope"], "'nope'"),
    (["score", "{csv}", "-o", "{out}", "--columns", "pixel_0_0,pixel_0_1"], "expects 64"),
    (["score", "{csv}", "-o", "{out}", "--id-column", "nope"], "--id-column 'nope'"),
    (["score", "{npy}", "-o", "{out}", "--id-column", "id"], "needs a CSV or Parquet"),
    (["score", "{npy}", "-o", "{out}", "--columns", "a,b"], "indices"),
    (["score", "{npy}", "-o", "{out}", "--columns", "0:10"], "expects 64"),
    (["score", "{npy3d}", "-o", "{out}"], "2-D"),
    (["score", "{garbage}", "-o", "{out}"], "not a readable .npy"),
    (["score", "{textcsv}", "-o", "{out}"], "not a number"),
    (["score", "{strparquet}", "-o", "{out}"], "must be numeric"),
    (["score", "{csv}", "-o", "{out}", "--condition-column", "label"], "not conditional"),
    (["score", "{csv}", "-o", "{out}", "-m", "nope"], "NOT_FOUND"),
    (["score", "{csv}", "-o", "{out}", "-m", "digits:x"], "must be an integer"),
    (["score", "{csv}", "-o", "{csv}"], "overwrite the input"),
    (["score", "{csv}", "-o", "-", "--resume"], "needs an output file"),
    (["score", "{csv}", "-o", "{tmp}/nodir/o.csv"], "does not exist"),
    (["score", "{csv}", "-o", "{out}", "--threshold", "nan"], "finite"),
    (["encode", "{csv}", "-o", "{tmp}/e.npz"], "cannot tell the output format"),
    (["interpolate", "{csv}", "--rows", "0,99999"], "past the end"),
]


@pytest.mark.parametrize(("args", "message"), BAD_CASES, ids=[c[1] for c in BAD_CASES])
def test_bad_files_columns_and_options_give_clear_errors(
    inputs, target, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "notes.xlsx").write_text("hello\n")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32))
    (tmp_path / "garbage.npy").write_bytes(b"not an npy file at all")
    header = ",".join(f"pixel_{i // 8}_{i % 8}" for i in range(64))
    (tmp_path / "text.csv").write_text(header + "\n" + ",".join(["x"] * 64) + "\n")
    table = pa.table({f"pixel_{i // 8}_{i % 8}": ["a"] for i in range(64)})
    pq.write_table(table, tmp_path / "str.parquet")
    names = {
        "missing": tmp_path / "nope.csv",
        "txt": tmp_path / "notes.xlsx",
        "npy3d": tmp_path / "cube.npy",
        "garbage": tmp_path / "garbage.npy",
        "textcsv": tmp_path / "text.csv",
        "strparquet": tmp_path / "str.parquet",
        "out": tmp_path / "o.csv",
        "tmp": tmp_path,
        **inputs,
    }
    filled = [a.format(**names) for a in args]
    if "-m" not in filled and filled[0] in ("score", "encode", "interpolate"):
        filled += ["-m", MODEL]
    result = invoke(filled, target)
    assert result.exit_code == 1, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_bad_option_values_are_usage_errors(inputs, target) -> None:
    for extra in (["--batch-size", "0"], ["--score", "bogus"], ["--in-flight", "0"]):
        result = invoke(["score", str(inputs["npy"]), "-o", "-", *extra], target)
        assert result.exit_code == 2 and "Invalid value" in result.stderr


def test_unreachable_server_fails_with_unavailable(inputs, tmp_path) -> None:
    from tests.client.conftest import free_port

    result = invoke(
        [
            "score",
            str(inputs["npy"]),
            "-o",
            str(tmp_path / "o.csv"),
            "--retries",
            "1",
            "--timeout",
            "3",
        ],
        f"127.0.0.1:{free_port()}",
    )
    assert result.exit_code == 1 and "UNAVAILABLE" in result.stderr


def test_encode_decode_reconstruct(client: VaeClient, inputs, digits, target, tmp_path) -> None:
    x = digits[0]
    enc = tmp_path / "enc.parquet"
    args = [
        "encode",
        str(inputs["csv"]),
        "-o",
        str(enc),
        "-m",
        MODEL,
        "--sample",
        "--batch-size",
        "500",
    ]
    assert invoke(args, target).exit_code == 0
    table = pq.read_table(enc)
    latent = client.model_info(MODEL).latent_dim
    mu = np.stack([table.column(f"mu_{d}").to_numpy() for d in range(latent)], axis=1)
    np.testing.assert_allclose(mu, client.encode(x, model=MODEL).mu, rtol=1e-5, atol=1e-6)
    assert {f"logvar_{d}" for d in range(latent)} <= set(table.column_names)
    assert f"z_{latent - 1}" in table.column_names
    dec = tmp_path / "dec.npy"
    assert invoke(["decode", str(enc), "-o", str(dec), "-m", MODEL], target).exit_code == 0
    z = np.stack([table.column(f"z_{d}").to_numpy() for d in range(latent)], axis=1)
    np.testing.assert_allclose(np.load(dec), client.decode(z, model=MODEL), rtol=1e-6)
    rec = tmp_path / "rec.csv"
    args = ["reconstruct", str(inputs["parquet"]), "-o", str(rec), "-m", MODEL, "--id-column", "id"]
    assert invoke(args, target).exit_code == 0
    table = read_output(rec)
    assert table.column_names[0] == "id" and table.num_rows == 1797
    got = np.stack([table.column(n).to_numpy() for n in digits[1]], axis=1)
    np.testing.assert_allclose(got, client.reconstruct(x, model=MODEL), rtol=1e-5, atol=1e-5)


def test_sample_and_interpolate(client: VaeClient, inputs, digits, target, tmp_path) -> None:
    out = tmp_path / "gen.npy"
    result = invoke(["sample", "-n", "25", "--seed", "4", "-o", str(out), "-m", MODEL], target)
    assert result.exit_code == 0, result.output
    expected = client.sample(25, model=MODEL, seed=4).rows
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)
    result = invoke(["sample", "-n", "3", "--with-z", "-m", MODEL], target)
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 4
    assert "z_0" in result.stdout.splitlines()[0]
    x = digits[0]
    mu = client.encode(x[[3, 10]], model=MODEL).mu
    for method in ("linear", "spherical"):
        path = tmp_path / f"{method}.csv"
        args = [
            "interpolate",
            str(inputs["npy"]),
            "--rows",
            "3,10",
            "-k",
            "5",
            "--method",
            method,
            "--with-z",
            "-o",
            str(path),
            "-m",
            MODEL,
        ]
        assert invoke(args, target).exit_code == 0
        table = read_output(path)
        assert table.num_rows == 5
        np.testing.assert_allclose(table.column("t").to_numpy(), np.linspace(0, 1, 5))
        z = np.stack([table.column(f"z_{d}").to_numpy() for d in range(mu.shape[1])], axis=1)
        np.testing.assert_allclose(z[0], mu[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z[-1], mu[1], rtol=1e-5, atol=1e-6)
        rows = np.stack([table.column(n).to_numpy() for n in digits[1]], axis=1)
        np.testing.assert_allclose(rows, client.decode(z, model=MODEL), rtol=1e-5, atol=1e-5)
        if method == "spherical":  # the norm moves monotonically between the ends' norms
            norms = np.linalg.norm(z, axis=1)
            assert norms.min() >= min(norms[0], norms[-1]) - 1e-4


def test_info_and_health(target: str) -> None:
    listing = invoke(["info"], target)
    assert listing.exit_code == 0 and listing.stdout.startswith(MODEL)
    described = invoke(["info", "-m", MODEL], target)
    assert described.exit_code == 0 and "input_dim    64" in described.stdout
    data = json.loads(invoke(["info", "-m", MODEL, "--json"], target).stdout)
    assert data["name"] == MODEL and data["input_dim"] == 64
    manifest = json.loads(invoke(["info", "-m", MODEL, "--manifest"], target).stdout)
    assert manifest["format_version"] == 1
    healthy = invoke(["health"], target)
    assert healthy.exit_code == 0 and healthy.stdout.strip() == "SERVING"
    unknown = invoke(["health", "--service", "no.such.Service"], target)
    assert unknown.exit_code == 1 and "NOT_FOUND" in unknown.stderr


def test_environment_variables_fill_options(inputs, target, tmp_path) -> None:
    out = tmp_path / "o.csv"
    env = {
        "VAECLIENT_MODEL": MODEL,
        "VAECLIENT_SCORE_BATCH_SIZE": "100",
        "VAECLIENT_SCORE_QUIET": "1",
        "VAECLIENT_TIMEOUT": "20",
    }
    result = invoke(["score", str(inputs["npy"]), "-o", str(out)], target, env=env)
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and read_output(out).num_rows == 1797


def test_batches_the_server_rejects_go_to_rejects_with_its_message(
    client: VaeClient, inputs, reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that pass the client's checks but whose batch the server refuses are kept too."""
    real_score = VaeClient.score

    def refuse_second_batch(self, batches, **kw):  # type: ignore[no-untyped-def]
        for result in real_score(self, batches, **kw):
            if result.index == 1:
                result.error = VaeClientError(
                    "batch 1 rejected",
                    code=grpc.StatusCode.INVALID_ARGUMENT,
                    details="rows: something the server dislikes",
                )
            yield result

    monkeypatch.setattr(VaeClient, "score", refuse_second_batch)
    out = tmp_path / "o.csv"
    job = ScoreJob(input=str(inputs["npy"]), output=str(out), model=MODEL, batch_size=100)
    summary = run_score_job(client, job)
    assert (summary.scored, summary.rejected) == (1697, 100)
    rejects = read_rejects(tmp_path / "o.rejects.csv")
    assert [int(r["row"]) for r in rejects] == list(range(100, 200))
    reason = "the server rejected the batch: rows: something the server dislikes"
    assert rejects[0]["reason"] == reason
    table = read_output(out)
    rows = np.array([i for i in range(1797) if not 100 <= i < 200])
    np.testing.assert_array_equal(table.column("row").to_numpy(), rows)
    assert_scores_match(table, reference, rows=rows)
