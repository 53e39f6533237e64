"""Dynamic batching: merged calls split back correctly, and concurrent streams equal serial ones."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.server.conftest import local_settings
from tests.server.helpers import TOL, Reference, arr, score_requests, stub_for
from vaeserve.common.tensors import to_tensor
from vaeserve.proto.vae.v1 import vae_pb2
from vaeserve.server import start_server
from vaeserve.server.batching import DynamicBatcher


class FakeRunner:
    """Stands in for a GraphRunner: y = 2x + row sum, noise summed over K; records batch sizes."""

    name = "fake"
    device = "test"  # not "cpu": its calls block on a gate, so they must run in the pool

    def __init__(self, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.shrinks: list[int] = []  # the calls (by index) asked to free memory afterwards
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()

    def run(self, feeds: dict[str, np.ndarray], shrink: bool = False) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        x = feeds["x"]
        if shrink:
            self.shrinks.append(len(self.calls))
        self.calls.append(len(x))
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("poisoned row")
        out = {"y": 2 * x, "s": x.sum(axis=1)}
        if "noise" in feeds:
            out["n"] = feeds["noise"].sum(axis=0)
        return out


def _batcher(runner: FakeRunner, max_rows: int = 100, delay: float = 0.0) -> DynamicBatcher:
    return DynamicBatcher(
        runner,
        ThreadPoolExecutor(2),
        max_rows=max_rows,
        max_delay_s=delay,
        batch_axes={"noise": 1},
        empty_outputs={"y": (3,), "s": ()},
    )


def _x(n: int, start: float) -> np.ndarray:
    return (start + np.arange(n * 3, dtype=np.float32)).reshape(n, 3)


def test_merges_concurrent_requests_and_splits_back() -> None:
    async def main() -> None:
        runner = FakeRunner()
        b = _batcher(runner, max_rows=100, delay=5.0)
        sizes = [3, 1, 7, 20, 5]
        xs = [_x(n, 100 * i) for i, n in enumerate(sizes)]
        noise = [np.full((4, n, 2), i, np.float32) for i, n in enumerate(sizes)]
        extra = _x(64, 0.5)  # 36 + 64 = 100 rows: the batch fills and runs without the delay
        outs = await asyncio.gather(
            *(b.run({"x": x, "noise": nz}, len(x)) for x, nz in zip(xs, noise, strict=True)),
            b.run({"x": extra, "noise": np.zeros((4, 64, 2), np.float32)}, 64),
        )
        assert runner.calls == [100]
        assert b.stats.calls == 1 and b.stats.max_merged == 6
        for i, (x, out) in enumerate(zip(xs, outs, strict=False)):
            np.testing.assert_array_equal(out["y"], 2 * x)
            np.testing.assert_array_equal(out["s"], x.sum(axis=1))
            np.testing.assert_array_equal(out["n"], np.full((len(x), 2), 4 * i, np.float32))

    asyncio.run(main())


def test_small_cpu_calls_run_inline_large_ones_in_the_pool() -> None:
    class ThreadRecorder(FakeRunner):
        device = "cpu"

        def __init__(self) -> None:
            super().__init__()
            self.threads: list[str] = []

        def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.threads.append(threading.current_thread().name)
            return super().run(feeds)

    runner = ThreadRecorder()
    b = _batcher(runner, max_rows=4096)

    async def main() -> None:
        small = await b.run({"x": _x(1, 0)}, 1)
        large = await b.run({"x": _x(500, 0)}, 500)
        iw = await b.run({"x": _x(1, 0), "noise": np.ones((8, 1, 2), np.float32)}, 1, key=8)
        np.testing.assert_array_equal(small["y"], 2 * _x(1, 0))
        assert large["y"].shape == (500, 3) and iw["n"].shape == (1, 2)

    asyncio.run(main())
    main_thread = threading.main_thread().name
    assert runner.threads[0] == main_thread  # one row: no hop to the pool
    assert runner.threads[1] != main_thread and runner.threads[2] != main_thread


def test_respects_max_rows_and_keys() -> None:
    async def main() -> None:
        runner = FakeRunner()
        b = _batcher(runner, max_rows=10, delay=0.05)
        jobs = [b.run({"x": _x(4, i)}, 4) for i in range(5)]
        jobs += [b.run({"x": _x(2, 50), "noise": np.zeros((3, 2, 1), np.float32)}, 2, key=3)]
        outs = await asyncio.gather(*jobs)
        assert all(n <= 10 for n in runner.calls)
        assert sorted(runner.calls) == [2, 4, 8, 8]  # keys are never merged
        for i in range(5):
            np.testing.assert_array_equal(outs[i]["y"], 2 * _x(4, i))
        assert "n" in outs[5] and outs[5]["y"].shape == (2, 3)

    asyncio.run(main())


def test_a_key_may_cap_its_calls_and_ask_for_memory_back() -> None:
    # importance sampling: K x rows is the work of a call, so its lane merges fewer rows
    async def main() -> None:
        runner = FakeRunner()
        b = _batcher(runner, max_rows=100, delay=0.05)
        noise = np.zeros((8, 3, 1), np.float32)
        jobs = [b.run({"x": _x(3, i), "noise": noise}, 3, key=8, max_rows=7) for i in range(4)]
        jobs.append(b.run({"x": _x(3, 9), "noise": noise}, 3, key=8, max_rows=7, release=True))
        outs = await asyncio.gather(*jobs)
        assert sorted(runner.calls) == [3, 6, 6]  # at most 7 rows merged, never 100
        (shrunk,) = runner.shrinks  # only the call holding the released request shrinks
        assert runner.calls[shrunk] in (3, 6)
        for i, out in enumerate(outs[:4]):
            np.testing.assert_array_equal(out["y"], 2 * _x(3, i))
        await b.run({"x": _x(50, 0)}, 50)  # other keys keep the batcher's own max_rows
        assert runner.calls[-1] == 50 and len(runner.shrinks) == 1

    asyncio.run(main())


def test_request_larger_than_max_rows_runs_alone() -> None:
    async def main() -> None:
        runner = FakeRunner()
        b = _batcher(runner, max_rows=10)
        out = await b.run({"x": _x(25, 0)}, 25)
        assert runner.calls == [25] and out["y"].shape == (25, 3)

    asyncio.run(main())


def test_zero_rows_answered_without_a_call() -> None:
    async def main() -> None:
        runner = FakeRunner()
        out = await _batcher(runner).run({"x": np.zeros((0, 3), np.float32)}, 0)
        assert runner.calls == [] and out["y"].shape == (0, 3) and out["s"].shape == (0,)

    asyncio.run(main())


def test_failing_request_does_not_fail_the_ones_merged_with_it() -> None:
    async def main() -> None:
        runner = FakeRunner(fail_on=-1.0)
        b = _batcher(runner, max_rows=100, delay=0.2)
        bad = np.full((2, 3), -1.0, np.float32)
        results = await asyncio.gather(
            b.run({"x": _x(3, 0)}, 3),
            b.run({"x": bad}, 2),
            b.run({"x": _x(4, 9)}, 4),
            return_exceptions=True,
        )
        assert isinstance(results[1], RuntimeError)
        np.testing.assert_array_equal(results[0]["y"], 2 * _x(3, 0))
        np.testing.assert_array_equal(results[2]["y"], 2 * _x(4, 9))

    asyncio.run(main())


def test_cancelled_request_is_dropped_before_its_call() -> None:
    async def main() -> None:
        runner = FakeRunner()
        runner.gate.clear()  # hold the first call so the others queue behind it
        b = _batcher(runner, max_rows=100)
        first = asyncio.ensure_future(b.run({"x": _x(1, 0)}, 1))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(b.run({"x": _x(5, 0)}, 5))
        kept = asyncio.ensure_future(b.run({"x": _x(2, 0)}, 2))
        await asyncio.sleep(0.05)
        gone.cancel()
        runner.gate.set()
        await first
        out = await kept
        assert runner.calls == [1, 2] and b.stats.dropped == 1
        assert out["y"].shape == (2, 3)

    asyncio.run(main())


@pytest.mark.slow
def test_concurrent_streams_equal_one_at_a_time(model_repo) -> None:
    x = load_digits().data.astype(np.float32)
    server = start_server(local_settings(model_repo, max_queue_delay_ms=5.0, max_batch_rows=512))
    try:
        channel, stub = stub_for(server.port)
        parts = [x[i::6] for i in range(6)]
        sizes = [17, 64, 33, 100, 5, 256]

        def run(i: int) -> list:
            reqs = score_requests(parts[i], sizes[i], include_kl_per_dim=True, iw_samples=4)
            return list(stub.Score(iter(reqs)))

        serial = [run(i) for i in range(6)]
        batcher = server.app.repository.get("digits").batchers["scorer"]
        before = batcher.stats.calls, batcher.stats.requests
        with ThreadPoolExecutor(6) as pool:
            concurrent = list(pool.map(run, range(6)))
        for a_list, b_list in zip(serial, concurrent, strict=True):
            assert [r.batch_id for r in a_list] == [r.batch_id for r in b_list]
            for a, b in zip(a_list, b_list, strict=True):
                assert not a.HasField("error") and not b.HasField("error")
                for k in ("kl", "kl_per_dim", "recon_nll", "neg_elbo", "p_value", "iw_nll"):
                    np.testing.assert_allclose(arr(getattr(a, k)), arr(getattr(b, k)), **TOL)
                np.testing.assert_array_equal(arr(a.row_ids), arr(b.row_ids))
                np.testing.assert_array_equal(arr(a.is_anomaly), arr(b.is_anomaly))
        requests = batcher.stats.requests - before[1]
        assert requests == sum(len(r) for r in serial)
        channel.close()
    finally:
        server.stop(grace=1.0)


def test_unary_requests_merge_into_one_call(model_repo) -> None:
    # A long delay and a batch limit equal to the total rows: the call runs when all arrived.
    x = load_digits().data.astype(np.float32)[:80]
    server = start_server(local_settings(model_repo, max_queue_delay_ms=20_000, max_batch_rows=80))
    try:
        channel, stub = stub_for(server.port)
        batcher = server.app.repository.get("digits").batchers["encoder"]
        calls = batcher.stats.calls
        chunks = [x[i : i + 10] for i in range(0, 80, 10)]
        with ThreadPoolExecutor(8) as pool:
            resps = list(
                pool.map(lambda c: stub.Encode(vae_pb2.EncodeRequest(rows=to_tensor(c))), chunks)
            )
        assert batcher.stats.calls - calls == 1 and batcher.stats.max_merged == 8
        mu = np.concatenate([arr(r.mu) for r in resps])
        want = Reference(model_repo / "digits" / "1").run("encoder", x=x)["mu"]
        np.testing.assert_allclose(mu, want, **TOL)
        channel.close()
    finally:
        server.stop(grace=1.0)
