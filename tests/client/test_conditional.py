"""A conditional model (synthetic, 3 classes): label columns become one-hot conditions, unknown
labels are rejected rows, and the commands take --condition."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from tests.client.helpers import invoke, read_output, read_rejects
from vaeserve.client import Batch, VaeClient
from vaeserve.server import VaeServer

CLASSES = ["class0", "class1", "class2"]


def test_condition_column_is_one_hot_encoded(cond_server: VaeServer, tmp_path: Path) -> None:
    target = f"127.0.0.1:{cond_server.port}"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    labels = np.array(CLASSES)[rng.integers(0, 3, 300)].astype(object)
    labels[[7, 150]] = "nope"
    table = pa.table({**{f"f{i}": x[:, i] for i in range(8)}, "label": labels.astype(str)})
    pacsv.write_csv(table, tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    summary = tmp_path / "s.json"
    args = [
        "score",
        str(tmp_path / "in.csv"),
        "-o",
        str(out),
        "-m",
        "cond",
        "--condition-column",
        "label",
        "--batch-size",
        "64",
        "--summary-json",
        str(summary),
    ]
    result = invoke(args, target)
    assert result.exit_code == 0, result.output
    rejects = read_rejects(tmp_path / "out.rejects.csv")
    assert [r["row"] for r in rejects] == ["7", "150"]
    assert all("unknown condition label" in r["reason"] for r in rejects)
    assert json.loads(summary.read_text())["rejected"] == 2
    good = np.array([i for i in range(300) if i not in (7, 150)])
    onehot = np.eye(3, dtype=np.float32)[[CLASSES.index(v) for v in labels[good]]]
    with VaeClient(target) as client:
        (ref,) = client.score([Batch(x[good], condition=onehot)], model="cond")
        got = read_output(out)
        np.testing.assert_array_equal(got.column("row").to_numpy(), good)
        np.testing.assert_allclose(got.column("kl").to_numpy(), ref.kl, rtol=1e-6)
        # Without the label column the job explains what it needs.
        missing = invoke(
            ["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o2.csv"), "-m", "cond"],
            target,
        )
        assert missing.exit_code == 1 and "--condition-column" in missing.stderr
        sample = tmp_path / "gen.csv"
        result = invoke(
            [
                "sample",
                "-n",
                "4",
                "--condition",
                "class1",
                "-m",
                "cond",
                "-o",
                str(sample),
                "--seed",
                "3",
            ],
            target,
        )
        assert result.exit_code == 0, result.output
        expected = client.sample(4, model="cond", seed=3, condition=np.eye(3)[[1]]).rows
        generated = read_output(sample)
        np.testing.assert_allclose(
            np.stack([generated.column(f"f{i}").to_numpy() for i in range(8)], axis=1),
            expected,
            rtol=1e-5,
            atol=1e-5,
        )
        bad = invoke(["sample", "-n", "4", "--condition", "class9", "-m", "cond"], target)
        assert bad.exit_code == 1 and "class9" in bad.stderr
        enc = invoke(
            [
                "encode",
                str(tmp_path / "in.csv"),
                "-m",
                "cond",
                "--columns",
                ",".join(f"f{i}" for i in range(8)),
                "--condition",
                "class2",
            ],
            target,
        )
        assert enc.exit_code == 0, enc.output
        assert enc.stdout.splitlines()[0].startswith('"row","mu_0"')
