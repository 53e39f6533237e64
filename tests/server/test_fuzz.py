"""Fuzzing: malformed but type-valid requests and raw undecodable bytes to Encode, Decode,
Sample, Score, ModelInfer and ModelStreamInfer. The server must answer every one within its
deadline, never UNKNOWN or INTERNAL, and stay up and healthy. Derandomized, so CI runs the same
cases each time; benchmarks/fuzz.py runs the same strategies for 100,000 cases."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings

from tests.server import fuzzing
from tests.server.conftest import local_settings
from tests.server.synth import write_synthetic_model
from vaeserve.server import VaeServer, start_server

CASES_PER_RPC = 250


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, model_repo: Path) -> Iterator[VaeServer]:
    """A server holding "digits" and the conditional "cond", with default limits."""
    repo = tmp_path_factory.mktemp("fuzz_repo")
    shutil.copytree(model_repo / "digits", repo / "digits")
    write_synthetic_model(repo, "cond", 1, input_dim=8, latent_dim=2, cond_dim=3, seed=2)
    server = start_server(local_settings(repo))
    yield server
    server.stop(grace=1.0)


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_server: VaeServer) -> Iterator[grpc.Channel]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.insecure_channel(f"127.0.0.1:{fuzz_server.port}", options=options)
    yield channel
    channel.close()


@pytest.mark.parametrize("rpc", list(fuzzing.CASES))
def test_fuzzed_requests_are_answered_cleanly(fuzz_channel: grpc.Channel, rpc: str) -> None:
    @settings(
        max_examples=CASES_PER_RPC,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzzing.cases(rpc))
    def check(case: fuzzing.Case) -> None:
        outcome = fuzzing.send(fuzz_channel, case, timeout=fuzzing.CALL_TIMEOUT_S)
        seen.update(outcome.codes)
        assert not outcome.bad, (case, outcome)

    seen: Counter[str] = Counter()
    check()
    # the cases reach the served path as well as the refusals
    assert seen["OK"] > 0 and seen["INVALID_ARGUMENT"] > 0, seen
    health = health_pb2_grpc.HealthStub(fuzz_channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
