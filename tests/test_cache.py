"""Prediction cache: keys, LRU bounds, corrupt and foreign entries, Redis shared between engines."""

import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import torch

import motorpool
from motorpool import CachedEngine, DynamicBatcher, InputError, LRUStore, RedisStore
from motorpool.serving.entries import decode_entry, encode_entry
from motorpool.testing import zoo


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


class Counting:
    """An engine wrapper counting how often the model really runs."""

    def __init__(self, engine):
        self.engine, self.calls = engine, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def __call__(self, *inputs):
        self.calls += 1
        return self.engine(*inputs)


@pytest.fixture(scope="module")
def dict_engine():
    model, x = zoo.get("dict_out").build(batch=2)
    return model, motorpool.compile(model, x, backend="eager")


@pytest.fixture(scope="module")
def mlp_engine():
    model, x = zoo.get("mlp").build(batch=2)
    return model, motorpool.compile(model, x, backend="eager")


def test_hit_returns_the_same_structure_without_running(dict_engine):
    model, engine = dict_engine
    counting = Counting(engine)
    cached = CachedEngine(counting)
    counting.calls = 0  # the identity probe ran once; count only calls from here
    x = torch.randn(3, 12)
    first, second = cached(x), cached(x.clone())
    assert counting.calls == 1 and cached.stats()["hits"] == 1 and cached.stats()["misses"] == 1
    for k in ("logits", "box"):
        torch.testing.assert_close(second[k], first[k], rtol=0, atol=0)
    torch.testing.assert_close(second["extra"][1], model(x)["extra"][1], rtol=1e-5, atol=1e-6)
    second["logits"].zero_()  # the caller owns its arrays: the cached entry is untouched
    assert not torch.equal(cached(x)["logits"], second["logits"])

    xn = x.numpy()
    y = cached(xn)  # same bytes, numpy in: served from the cache, as numpy
    assert isinstance(y["box"], np.ndarray) and counting.calls == 1
    cached(x + 1e-6)  # any change of a byte is another key
    cached(x[:2])     # so is another shape
    assert counting.calls == 3
    with pytest.raises(InputError, match="expected shape"):
        cached(torch.randn(3, 11))


def test_keys_depend_on_dtype_shape_and_engine(mlp_engine):
    model, engine = mlp_engine
    cached = CachedEngine(engine)
    x = torch.randn(2, 32)
    assert cached.key(x) == cached.key(x.clone())
    assert cached.key(x) != cached.key(x.reshape(1, 2, 32)) != cached.key(x.double())
    other = motorpool.compile(zoo.get("mlp").build(batch=2, seed=1)[0], x, backend="eager")  # other weights
    assert CachedEngine(other).key(x) != cached.key(x)
    assert CachedEngine(engine, namespace="v2").key(x) != cached.key(x)
    assert CachedEngine(engine).key(x) == cached.key(x)  # the identity is stable


def test_lru_evicts_by_entries_and_bytes():
    store = LRUStore(max_entries=3, max_bytes=1000)
    for k in "abc":
        store.set(k, b"x" * 100)
    store.get("a")  # a is now the most recent
    store.set("d", b"x" * 100)
    assert "b" not in store and {"a", "c", "d"} <= set(store._data) and len(store) == 3
    store.set("e", b"x" * 800)  # 300 + 800 > 1000: evict least recent until it fits
    assert list(store._data) == ["a", "d", "e"] and store.nbytes == 1000  # c was least recent
    store.set("huge", b"x" * 1001)  # larger than the store: not kept, nothing evicted for it
    assert "huge" not in store and len(store) == 3
    assert store.evictions == 2


def test_lru_bounds_hold_through_a_cached_engine(mlp_engine):
    _, engine = mlp_engine
    store = LRUStore(max_entries=5, max_bytes=10_000)
    cached = CachedEngine(engine, store)
    xs = [torch.randn(1, 32) for _ in range(8)]
    for x in xs:
        cached(x)
    assert len(store) == 5 and store.nbytes <= 10_000
    cached(xs[-1])
    cached(xs[0])  # evicted long ago
    assert cached.stats()["hits"] == 1 and cached.stats()["misses"] == 9


def test_corrupt_or_foreign_entries_are_misses(mlp_engine):
    _, engine = mlp_engine
    store = LRUStore()
    counting = Counting(engine)
    cached = CachedEngine(counting, store)
    x, other = torch.randn(2, 32), torch.randn(2, 32)
    truth = cached(x)
    key = cached.key(x)
    good = store.get(key)

    for bad in (good[:-1], good[:10], b"", b"MPC1" + good[4:-3] + b"abc", good[:40] + bytes([good[40] ^ 1]) + good[41:]):
        store.set(key, bad)
        calls = counting.calls
        torch.testing.assert_close(cached(x), truth, rtol=0, atol=0)
        assert counting.calls == calls + 1  # recomputed, never decoded into a wrong answer

    # an intact entry written for another key (a foreign entry) is a miss too
    store.set(key, store.get(cached.key(other)) or encode_entry(cached.key(other), engine(other)))
    calls = counting.calls
    torch.testing.assert_close(cached(x), truth, rtol=0, atol=0)
    assert counting.calls == calls + 1
    assert cached.stats()["corrupt"] == 6


def test_entries_hold_no_pickle_and_reject_object_arrays():
    entry = encode_entry("k", {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": (torch.ones(2, dtype=torch.bfloat16),)})
    assert b"pickle" not in entry and entry.startswith(b"MPC1")
    ok, value = decode_entry("k", entry, as_numpy=False)
    assert ok and value["a"].dtype == torch.int64 and value["b"][0].dtype == torch.bfloat16
    assert encode_entry("k", np.array([object()], dtype=object)) is None
    assert decode_entry("other", entry, as_numpy=True) == (False, None)


def test_cache_in_front_of_a_batcher(mlp_engine):
    model, engine = mlp_engine
    with DynamicBatcher(engine, max_delay_ms=1) as batcher:
        cached = CachedEngine(batcher)
        xs = [torch.randn(1, 32) for _ in range(5)]
        first = [cached(x) for x in xs]
        again = [cached(x) for x in xs]
    for x, a, b in zip(xs, first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, model(x), rtol=1e-4, atol=1e-5)
    assert batcher.stats().submitted == 5 and cached.stats()["hits"] == 5


# -- Redis ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    redis = pytest.importorskip("redis", reason='redis-py is not installed: pip install "motorpool[redis]"')
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(f"redis-server exited with {proc.returncode}")
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not answer within 5 s")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_redis_shared_between_two_cached_engines(redis_url, mlp_engine):
    model, engine = mlp_engine
    first, second = Counting(engine), Counting(engine)
    a = CachedEngine(first, RedisStore(redis_url, prefix="test-shared:"))
    b = CachedEngine(second, RedisStore(redis_url, prefix="test-shared:"))
    first.calls = second.calls = 0
    x = torch.randn(3, 32)
    ya = a(x)
    yb = b(x)  # computed by a, answered to b through Redis
    assert first.calls == 1 and second.calls == 0
    torch.testing.assert_close(yb, ya, rtol=0, atol=0)
    torch.testing.assert_close(yb, model(x), rtol=1e-4, atol=1e-5)
    assert a.stats()["misses"] == 1 and b.stats()["hits"] == 1

    # a corrupt value in Redis is a miss, recomputed and overwritten
    b.store.client.set("test-shared:" + b.key(x), b"MPC1garbage")
    torch.testing.assert_close(b(x), ya, rtol=0, atol=0)
    assert second.calls == 1 and b.stats()["corrupt"] == 1
    torch.testing.assert_close(a(x), ya, rtol=0, atol=0)
    assert first.calls == 1

    b.store.clear()
    assert not list(b.store.client.scan_iter(match="test-shared:*"))


def test_redis_from_many_threads_and_ttl(redis_url, mlp_engine):
    _, engine = mlp_engine
    counting = Counting(engine)
    cached = CachedEngine(counting, RedisStore(redis_url, prefix="test-threads:", ttl_s=30))
    counting.calls = 0
    xs = [torch.randn(1, 32) for _ in range(20)]
    errors = []

    def worker():
        try:
            for x in xs:
                torch.testing.assert_close(cached(x), engine(x), rtol=0, atol=0)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    stats = cached.stats()
    assert stats["hits"] + stats["misses"] == 80
    # every miss either ran the model or waited for the thread already running it on the same input
    assert counting.calls == stats["misses"] - stats["coalesced"] and 20 <= counting.calls < 80
    ttl = cached.store.client.pttl("test-threads:" + cached.key(xs[0]))
    assert 0 < ttl <= 30_000


def test_unreachable_redis_is_a_miss_not_a_failure(mlp_engine):
    pytest.importorskip("redis", reason='redis-py is not installed: pip install "motorpool[redis]"')
    _, engine = mlp_engine
    cached = CachedEngine(engine, RedisStore(f"redis://127.0.0.1:{_free_port()}/0", socket_timeout_s=0.2))
    x = torch.randn(1, 32)
    with pytest.warns(RuntimeWarning, match="treating as a miss"):
        y = cached(x)
    torch.testing.assert_close(y, engine(x), rtol=0, atol=0)
    assert cached.store.errors >= 1 and cached.stats()["misses"] == 1
