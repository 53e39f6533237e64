"""A Node.js client written from docs/server.md alone (docs/clients/node/score.js, with
@grpc/grpc-js, @grpc/proto-loader and grpc-health-check) scores rows against a real server
and gets the same numbers as VaeClient. Node and npm must be installed: a missing one fails
the test with what to install."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.server.conftest import local_settings
from vaeserve.client import VaeClient
from vaeserve.server import start_server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "clients" / "node"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: install Node.js 18+ with npm to run this test")
    return path


@pytest.mark.slow
def test_node_client_from_the_docs_matches_vae_client(tmp_path: Path, model_repo: Path) -> None:
    node, npm = _tool("node"), _tool("npm")
    work = tmp_path / "node"
    work.mkdir()
    for name in ("package.json", "package-lock.json", "score.js"):
        shutil.copy2(EXAMPLE / name, work / name)
    install = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=work, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]

    x = np.random.default_rng(5).uniform(0, 16, size=(300, 64)).astype(np.float32)
    x[7] += 40.0  # one row far from the data, so a flag is set
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(x.tolist()))
    with start_server(local_settings(model_repo)) as server:
        target = f"127.0.0.1:{server.port}"
        run = subprocess.run(
            [node, "score.js", "--server", target, "--model", "digits", "--rows",
             str(rows_file), "--proto", str(ROOT / "proto"), "--batch", "128"],
            cwd=work, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        with VaeClient(target) as client:
            want = list(client.score([x[:128], x[128:256], x[256:]], model="digits"))
    got = [json.loads(line) for line in run.stdout.splitlines()]
    assert [g["row"] for g in got] == list(range(300))
    for name in ("kl", "recon_nll", "neg_elbo", "p_value"):
        expected = np.concatenate([getattr(w, name) for w in want])
        np.testing.assert_array_equal(np.array([g[name] for g in got]), expected)
    flags = np.concatenate([w.is_anomaly for w in want])
    assert [g["is_anomaly"] for g in got] == flags.tolist() and flags.any()
