"""DynamicBatcher: grouping, ordering, back-pressure, timeouts, per-request errors, shutdown, asyncio, load."""

import asyncio
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import motorpool
from motorpool import BatcherClosed, DynamicBatcher, InputError, QueueFull
from motorpool.testing import zoo

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():  # reference outputs computed here need no autograd
        yield


@pytest.fixture(scope="module")
def mlp():
    model, x = zoo.get("mlp").build(batch=4)
    return model, motorpool.compile(model, x, backend="eager")


@pytest.fixture(scope="module")
def dict_out():
    model, x = zoo.get("dict_out").build(batch=2)
    return model, motorpool.compile(model, x, backend="eager")


class Gated(nn.Module):
    """A linear layer whose forward can be held at a gate, to make the worker busy on demand.
    It records the rows of every batch it runs and refuses any input holding NaN (a poisoned request)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.entered.set()
        assert self.gate.wait(10), "test gate never opened"
        if torch.isnan(x).any():
            raise ValueError("NaN in the input")
        self.seen.append(x.clone())
        return self.fc(x)


@pytest.fixture
def gated():
    model = Gated().eval()
    engine = motorpool.compile(model, torch.randn(2, 6), backend="eager")
    model.seen.clear()
    model.entered.clear()
    return model, engine


def hold(model, batcher):
    """Occupy the batcher's worker with one request stuck at the model's gate; returns that request."""
    model.gate.clear()
    model.entered.clear()
    first = batcher.submit(torch.randn(1, 6))
    assert model.entered.wait(5)
    return first


def test_results_match_own_inputs_in_order(mlp):
    model, engine = mlp
    xs = [torch.randn(1 + i % 3, 32) for i in range(40)]
    with DynamicBatcher(engine, max_batch_size=8, max_delay_ms=5) as batcher:
        futures = [batcher.submit(x) for x in xs]
        results = [f.result(10) for f in futures]
    for x, y in zip(xs, results):
        assert y.shape == (x.shape[0], 10)
        torch.testing.assert_close(y, model(x), **TOL)
    stats = batcher.stats()
    assert stats.completed == 40 and stats.failed == 0
    assert max(stats.batch_sizes) <= 8 and stats.mean_batch_size > 1  # really batched, never over the limit
    assert sum(k * v for k, v in stats.batch_sizes.items()) == sum(x.shape[0] for x in xs)


def test_structured_outputs_split_per_request_numpy_in_numpy_out(dict_out):
    model, engine = dict_out
    xs = [np.random.default_rng(i).standard_normal((1 + i % 2, 12)).astype(np.float32) for i in range(12)]
    with DynamicBatcher(engine, max_batch_size=16, max_delay_ms=20) as batcher:
        results = [f.result(10) for f in [batcher.submit(x) for x in xs]]
    assert batcher.stats().batches < len(xs)
    for x, y in zip(xs, results):
        ref = model(torch.from_numpy(x))
        assert set(y) == {"logits", "box", "extra"} and isinstance(y["extra"], tuple)
        assert isinstance(y["logits"], np.ndarray) and y["logits"].shape == (x.shape[0], 5)
        np.testing.assert_allclose(y["box"], ref["box"].numpy(), **TOL)
        np.testing.assert_allclose(y["extra"][1], ref["extra"][1].numpy(), **TOL)


def test_bad_request_raises_at_submit_and_never_reaches_a_batch(mlp):
    _, engine = mlp
    with DynamicBatcher(engine) as batcher:
        with pytest.raises(InputError, match=r"input 'x': expected shape \['batch', 32\], got \[1, 31\]"):
            batcher.submit(torch.randn(1, 31))
        with pytest.raises(InputError, match="expected dtype float32, got float64"):
            batcher(torch.randn(2, 32, dtype=torch.float64))
        assert batcher(torch.randn(2, 32)).shape == (2, 10)
    assert batcher.stats().submitted == 1


def test_buckets_by_shape_and_pad_function():
    model, ex = zoo.get("gru").build(batch=2)
    engine = motorpool.compile(model, ex, backend="eager", dynamic_dims={"x": {1: "steps"}})
    runs = []

    class Spy:  # records the shape of every batch the batcher runs
        input_spec = engine.input_spec

        def __call__(self, *inputs):
            runs.append(tuple(inputs[0].shape))
            return engine(*inputs)

    xs = [torch.randn(1, steps, 8) for steps in (4, 7, 4, 7, 4, 9)]
    with DynamicBatcher(Spy(), max_batch_size=8, max_delay_ms=50) as batcher:
        results = [f.result(10) for f in [batcher.submit(x) for x in xs]]
    assert sorted(runs) == [(1, 9, 8), (2, 7, 8), (3, 4, 8)]  # one batch per sequence length
    for x, y in zip(xs, results):
        torch.testing.assert_close(y, model(x), **TOL)

    # a pad function rounding lengths up to bucket sizes lets 4 and 7 steps share a batch of 8 steps
    runs.clear()
    pad = motorpool.pad_to_buckets([8, 16], axis=1, value=0.0)
    with DynamicBatcher(Spy(), max_batch_size=8, max_delay_ms=50, pad=pad) as batcher:
        results = [f.result(10) for f in [batcher.submit(x) for x in xs]]
    assert sorted(runs) == [(1, 16, 8), (5, 8, 8)]
    torch.testing.assert_close(results[0], model(pad((xs[0],))[0]), **TOL)


def test_encoder_buckets_with_mask_padding_give_the_unpadded_answer():
    model, ex = zoo.get("encoder").build(batch=2)
    engine = motorpool.compile(model, ex, backend="eager",
                               dynamic_dims={"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}})
    pad = motorpool.pad_to_buckets([16, 32], axis=1, value=0)
    reqs = []
    for seq in (5, 11, 16, 20):
        ids, mask = torch.randint(1, 100, (1, seq)), torch.ones(1, seq, dtype=torch.int64)
        reqs.append((ids, mask))
    with DynamicBatcher(engine, max_batch_size=8, max_delay_ms=30, pad=pad) as batcher:
        results = [f.result(10) for f in [batcher.submit(*r) for r in reqs]]
    for r, y in zip(reqs, results):
        torch.testing.assert_close(y, model(*r), rtol=1e-4, atol=1e-4)


def test_full_queue_rejects_at_once(gated):
    model, engine = gated
    batcher = DynamicBatcher(engine, max_batch_size=2, max_delay_ms=0, max_queue=3)
    try:
        first = hold(model, batcher)
        queued = [batcher.submit(torch.randn(1, 6)) for _ in range(3)]
        with pytest.raises(QueueFull, match="queue is full"):
            batcher.submit(torch.randn(1, 6))
        # refused while the held batch still runs: submit never waited for room in the queue
        assert not first.done() and not any(f.done() for f in queued)
        assert isinstance(QueueFull("x", max_queue=1), motorpool.MotorpoolError)
        model.gate.set()
        for f in [first, *queued]:
            assert f.result(5).shape == (1, 3)
        assert batcher.stats().rejected == 1
    finally:
        model.gate.set()
        batcher.close()


def test_timed_out_requests_fail_and_never_run(gated):
    model, engine = gated
    batcher = DynamicBatcher(engine, max_batch_size=4, max_delay_ms=0, timeout_ms=30)
    try:
        first = hold(model, batcher)
        late = [batcher.submit(torch.full((1, 6), 7.0 + i)) for i in range(3)]
        patient = batcher.submit(torch.full((1, 6), 99.0), timeout_ms=None)
        time.sleep(0.08)
        model.gate.set()
        for f in late:
            with pytest.raises(TimeoutError, match="past its timeout; it was not run"):
                f.result(5)
        assert patient.result(5).shape == (1, 3)
        assert first.result(5).shape == (1, 3)
        ran = torch.cat(model.seen)
        assert not any(((ran - (7.0 + i)).abs().sum(1) == 0).any() for i in range(3))  # never reached the model
        assert batcher.stats().timed_out == 3
    finally:
        model.gate.set()
        batcher.close()


def test_timeout_fires_while_idle_without_traffic(gated):
    _, engine = gated
    with DynamicBatcher(engine, max_batch_size=64, max_delay_ms=10_000, timeout_ms=20) as batcher:
        f = batcher.submit(torch.randn(1, 6))
        with pytest.raises(TimeoutError, match="past its timeout"):  # not result()'s own wait running out
            f.result(5)  # failed by the worker's timed wait, not by a later request
        assert batcher.stats().timed_out == 1


def test_poisoned_request_fails_alone(gated):
    model, engine = gated
    batcher = DynamicBatcher(engine, max_batch_size=8, max_delay_ms=0)
    try:
        first = hold(model, batcher)
        good = [torch.randn(1, 6) for _ in range(5)]
        bad = torch.randn(1, 6)
        bad[0, 2] = float("nan")
        futures = [batcher.submit(x) for x in good[:2]] + [batcher.submit(bad)] + [batcher.submit(x) for x in good[2:]]
        model.gate.set()
        first.result(5)
        results = [f.result(5) if i != 2 else None for i, f in enumerate(futures)]
        with pytest.raises(RuntimeError, match="NaN in the input"):
            futures[2].result(5)
        for x, y in zip(good, [r for i, r in enumerate(results) if i != 2]):
            torch.testing.assert_close(y, model.fc(x), **TOL)
        stats = batcher.stats()
        assert stats.failed == 1 and stats.retried_batches == 1 and stats.completed == 6
    finally:
        model.gate.set()
        batcher.close()


@pytest.mark.parametrize("drain", [True, False])
def test_close_with_requests_in_flight(gated, drain):
    model, engine = gated
    batcher = DynamicBatcher(engine, max_batch_size=2, max_delay_ms=0)
    first = hold(model, batcher)
    queued = [batcher.submit(torch.randn(1, 6)) for _ in range(5)]
    closer = threading.Thread(target=batcher.close, kwargs={"drain": drain})
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherClosed, match="closed"):
        batcher.submit(torch.randn(1, 6))
    model.gate.set()
    closer.join(5)
    assert not closer.is_alive()
    assert first.result(0).shape == (1, 3)  # the running batch always finishes
    if drain:
        assert all(f.result(0).shape == (1, 3) for f in queued)
    else:
        for f in queued:
            with pytest.raises(BatcherClosed, match="drain=False"):
                f.result(0)
        assert batcher.stats().cancelled == 5
    assert batcher.closed and not any(t.is_alive() for t in batcher._threads)


def test_cancelled_future_is_skipped(gated):
    model, engine = gated
    with DynamicBatcher(engine, max_batch_size=4, max_delay_ms=0) as batcher:
        first = hold(model, batcher)
        doomed = batcher.submit(torch.full((1, 6), 5.0))
        kept = batcher.submit(torch.randn(1, 6))
        assert doomed.cancel()
        model.gate.set()
        assert kept.result(5).shape == (1, 3) and first.result(5).shape == (1, 3)
    assert not any(((x - 5.0).abs().sum(1) == 0).any() for x in model.seen)
    assert batcher.stats().cancelled == 1


def test_static_batch_engine_pads_and_trims():
    model, x = zoo.get("mlp").build(batch=4)
    engine = motorpool.compile(model, x, backend="eager", dynamic_batch=False)
    with DynamicBatcher(engine, max_delay_ms=1) as batcher:
        assert batcher.max_batch_size == 4
        xs = [torch.randn(n, 32) for n in (1, 3, 2, 1)]
        results = [f.result(5) for f in [batcher.submit(v) for v in xs]]
        with pytest.raises(InputError, match="fixed at 4"):
            batcher.submit(torch.randn(5, 32))
    for v, y in zip(xs, results):
        torch.testing.assert_close(y, model(v), **TOL)
    assert set(batcher.stats().batch_sizes) <= {1, 2, 3, 4}


def test_asyncio_from_two_loops_in_two_threads(mlp):
    model, engine = mlp
    errors, checked = [], []

    def loop_thread(seed):
        async def main():
            gen = torch.Generator().manual_seed(seed)
            xs = [torch.randn(1, 32, generator=gen) for _ in range(60)]
            ys = await asyncio.gather(*(batcher.infer(x) for x in xs))
            for x, y in zip(xs, ys):
                torch.testing.assert_close(y, model(x), **TOL)
            checked.append(len(ys))
        try:
            asyncio.run(main())
        except Exception as exc:  # surfaced in the main thread below
            errors.append(exc)

    with DynamicBatcher(engine, max_batch_size=16, max_delay_ms=2) as batcher:
        threads = [threading.Thread(target=loop_thread, args=(s,)) for s in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert checked == [60, 60]
    assert batcher.stats().mean_batch_size > 1


def test_asyncio_task_cancellation_cancels_the_request(gated):
    model, engine = gated

    async def main(batcher):
        task = asyncio.ensure_future(batcher.infer(torch.full((1, 6), 3.0)))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with DynamicBatcher(engine, max_batch_size=4, max_delay_ms=0) as batcher:
        first = hold(model, batcher)
        asyncio.run(main(batcher))
        model.gate.set()
        first.result(5)
    assert not any(((x - 3.0).abs().sum(1) == 0).any() for x in model.seen)
    assert batcher.stats().cancelled == 1 and batcher.stats().submitted == 2


def test_thousands_of_concurrent_requests_none_lost_or_duplicated(mlp):
    model, engine = mlp
    n_threads, per_thread = 32, 100
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    lock = threading.Lock()
    errors = []

    def client(tid):
        gen = torch.Generator().manual_seed(1000 + tid)
        try:
            pending = []
            for i in range(per_thread):
                x = torch.randn(1, 32, generator=gen)
                if tid % 2:  # half the clients block on each call (woken in chains), half hold futures
                    with lock:
                        assert tid * per_thread + i not in results
                    y = batcher(x)
                    with lock:
                        results[tid * per_thread + i] = (x, y)
                    continue
                pending.append((tid * per_thread + i, x, batcher.submit(x)))
                if len(pending) >= 4:  # a few in flight per client
                    rid, xx, f = pending.pop(0)
                    with lock:
                        assert rid not in results
                        results[rid] = (xx, f.result(30))
            for rid, xx, f in pending:
                with lock:
                    results[rid] = (xx, f.result(30))
        except Exception as exc:
            errors.append(exc)

    with DynamicBatcher(engine, max_batch_size=32, max_delay_ms=1, max_queue=4096) as batcher:
        threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert len(results) == n_threads * per_thread
    xs = torch.cat([results[i][0] for i in range(len(results))])
    ys = torch.cat([results[i][1] for i in range(len(results))])
    torch.testing.assert_close(ys, model(xs), **TOL)  # each result belongs to its own input
    stats = batcher.stats()
    assert stats.submitted == stats.completed == n_threads * per_thread
    assert stats.queued == 0 and stats.failed == 0
    assert stats.mean_batch_size > 1
    assert stats.queue_delay_ms["p50"] >= 0 and stats.run_ms["p99"] >= stats.run_ms["p50"] > 0


def test_unsplittable_outputs_fall_back_to_one_request_per_run():
    class Pooled(nn.Module):  # reduces over the batch: no batch dimension to split
        def forward(self, x):
            return x.sum(0)

    engine = motorpool.compile(Pooled(), torch.randn(2, 4), backend="eager")
    xs = [torch.randn(1 + i % 2, 4) for i in range(6)]
    with pytest.warns(UserWarning, match="one request at a time"):
        with DynamicBatcher(engine, max_batch_size=8, max_delay_ms=30) as batcher:
            results = [f.result(5) for f in [batcher.submit(x) for x in xs]]
    for x, y in zip(xs, results):
        torch.testing.assert_close(y, x.sum(0))


def test_argument_checks(mlp):
    _, engine = mlp
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(engine, max_batch_size=0)
    with pytest.raises(ValueError, match="timeout_ms"):
        DynamicBatcher(engine, timeout_ms=-1)
    b = DynamicBatcher(engine)
    b.close()
    b.close()  # idempotent
    with pytest.raises(BatcherClosed):
        b(torch.randn(1, 32))


def test_http_example_serves_through_batcher_and_cache():
    import importlib.util
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    sys.path.insert(0, str(examples))
    try:
        serve_http = importlib.import_module("serve_http")
        load_clients = importlib.import_module("load_clients")
    finally:
        sys.path.remove(str(examples))
    engine, batcher, cached = serve_http.build("mlp", max_delay_ms=5)
    server = serve_http.PredictionServer(("127.0.0.1", 0), engine, batcher, cached)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        figures = load_clients.run_load(url, clients=8, requests=120, repeat=0.3)
        client = load_clients.Client(url)
        code, body = client.request("POST", "/predict", {"inputs": [[[1.0] * 31]]})
        x = np.random.default_rng(5).standard_normal((2, 32)).astype(np.float32)
        ok_code, ok_body = client.request("POST", "/predict", {"inputs": [x.tolist()]})
        client.close()
    finally:
        server.shutdown()
        batcher.close()
        server.server_close()
    assert figures["statuses"] == {200: 120} and not figures["mismatches"]
    assert figures["cached_answers"] > 0  # repeated inputs were answered by the cache, identically
    served = figures["server"]
    assert served["cache"]["hits"] + served["cache"]["coalesced"] == figures["cached_answers"]
    assert served["batcher"]["completed"] == 120 - figures["cached_answers"]
    assert code == 400 and "expected shape ['batch', 32], got [1, 31]" in body["error"]
    assert ok_code == 200 and not ok_body["cached"]
    np.testing.assert_allclose(np.array(ok_body["outputs"]), engine(x), rtol=1e-5, atol=1e-6)


def test_blocking_callers_run_inline_when_idle_but_never_beyond_the_slots(mlp):
    model, engine = mlp
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Concurrency:  # counts how many batches run at the same time
        input_spec = engine.input_spec

        def __call__(self, *inputs):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
                state.setdefault("threads", []).append(threading.get_ident())
            try:
                time.sleep(0.001)
                return engine(*inputs)
            finally:
                with lock:
                    state["now"] -= 1

    errors = []

    def client(seed):
        gen = torch.Generator().manual_seed(seed)
        try:
            for _ in range(40):
                x = torch.randn(1, 32, generator=gen)
                torch.testing.assert_close(batcher(x), model(x), **TOL)
        except Exception as exc:
            errors.append(exc)

    with DynamicBatcher(Concurrency(), max_batch_size=16, max_delay_ms=0) as batcher:
        x = torch.randn(1, 32)
        torch.testing.assert_close(batcher(x), model(x), **TOL)  # alone: run by the caller itself
        assert state["threads"] == [threading.get_ident()]
        threads = [threading.Thread(target=client, args=(s,)) for s in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    stats = batcher.stats()
    assert stats.completed == 12 * 40 + 1 and stats.queued == 0
    assert state["most"] == 1  # one slot: callers running inline and the worker never overlap
    assert stats.batches < stats.completed  # under contention requests were still batched
