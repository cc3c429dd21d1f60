"""Nothing is lost (issue 13): export -> load, an interrupted overwrite, a sick Redis, planted entries."""

from __future__ import annotations

import importlib
import os
import socket
import threading
from pathlib import Path

import pytest
import torch

import motorpool

_BACKENDS = {b.name: b for b in motorpool.list_backends()}


def _module(*names: str):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"none of {names} imports")


class Small(torch.nn.Module):
    def __init__(self, sign: float = 1.0):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)
        self.sign = sign

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.sign


# -- export -> load ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eager", "torchscript", "onnxruntime", "openvino", "torch_compile", "coreml"])
def test_export_then_load_round_trip(tmp_path, name):
    info = _BACKENDS.get(name)
    if info is None or not (info.available or info.can_export):
        pytest.skip(f"{name} can neither run nor export here: {getattr(info, 'reason', 'not registered')}")
    model = Small().eval()
    path = motorpool.export(model, torch.randn(2, 4), backend=name, path=tmp_path / name)
    if not info.available:
        pytest.skip(f"{name} exported here but cannot run here to load it: {info.reason}")
    engine = motorpool.load(path, trust_code=True)
    x = torch.randn(5, 4)
    with torch.inference_mode():
        want = model(x)
    torch.testing.assert_close(engine(x), want, atol=1e-4, rtol=1e-3)


# -- save(overwrite=True) keeps the old engine until the new one is whole ------------------------------------


def test_interrupted_overwrite_keeps_a_whole_engine_in_place(tmp_path, monkeypatch):
    x = torch.randn(2, 4)
    old_model, new_model = Small(1.0).eval(), Small(-1.0).eval()
    path = tmp_path / "engine"
    motorpool.compile(old_model, (x,), backend="eager", cache=False).save(path)
    new = motorpool.compile(new_model, (x,), backend="eager", cache=False)

    real_replace, real_rename = os.replace, os.rename

    def interrupted(real):
        def move(src, dst, *args, **kwargs):
            if Path(dst) == path:  # the step that would put the new engine in place: the process dies here
                raise KeyboardInterrupt("killed between the renames")
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "replace", interrupted(real_replace))
    monkeypatch.setattr(os, "rename", interrupted(real_rename))
    try:
        new.save(path, overwrite=True)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()

    assert path.is_dir(), "the old engine vanished and the new one never arrived"
    loaded = motorpool.load(path)
    q = torch.randn(3, 4)
    got = loaded(q)
    with torch.inference_mode():
        candidates = [old_model(q), new_model(q)]
    assert any(torch.allclose(got, c, atol=1e-5) for c in candidates), "what is at the path is neither engine"


# -- a Redis that accepts connections and never answers ------------------------------------------------------


class SilentServer:
    """Accepts TCP connections on 127.0.0.1, reads what comes, never replies. Counts the commands sent."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.commands = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._lock = threading.Lock()
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn):
        conn.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.commands += data.count(b"*")  # one RESP array per command (keys hold no '*')

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        for c in self._conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_redis():
    pytest.importorskip("redis", reason='redis-py is not installed (pip install "motorpool[redis]")')
    server = SilentServer()
    yield server
    server.close()


def _silent_client(port: int):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.05, socket_connect_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sick_redis_trips_a_circuit_breaker(silent_redis):
    clock = FakeClock()
    store = motorpool.RedisStore(client=_silent_client(silent_redis.port), failure_threshold=3,
                                 retry_after_s=30.0, clock=clock)
    engine = motorpool.compile(Small().eval(), (torch.randn(2, 4),), backend="eager", cache=False)
    cached = motorpool.CachedEngine(engine, store)
    calls = 12
    with pytest.warns(RuntimeWarning, match="RedisStore"):
        for _ in range(calls):
            x = torch.randn(2, 4)
            torch.testing.assert_close(cached(x), engine(x))
    stats = cached.stats()["store"]
    assert silent_redis.commands <= 3, f"Redis was asked {silent_redis.commands} times after it stopped answering"
    assert stats["errors"] == 3 and stats["breaker"] == "open"
    assert stats["skipped"] == 2 * calls - 3, stats

    clock.now += 31.0  # after the pause one call probes Redis again, and the breaker re-opens when it fails
    cached(torch.randn(2, 4))
    assert silent_redis.commands <= 4
    assert cached.stats()["store"]["errors"] == 4 and cached.stats()["store"]["breaker"] == "open"


# -- entries signed with a shared key -----------------------------------------------------------------------


def test_planted_entry_without_the_key_is_a_miss():
    prediction_cache = _module("motorpool.serving.prediction_cache", "motorpool.cache")
    engine = motorpool.compile(Small().eval(), (torch.randn(2, 4),), backend="eager", cache=False)
    store = motorpool.LRUStore()
    cached = motorpool.CachedEngine(engine, store, hmac_key=b"shared secret")
    x = torch.randn(2, 4)
    # someone who can write to the store, but lacks the key, plants an answer for x
    store.set(cached.key(x), prediction_cache.encode_entry(cached.key(x), torch.full((2, 3), 42.0)))
    out, from_cache = cached.call(x)
    assert not from_cache
    torch.testing.assert_close(out, engine(x))
    assert cached.stats()["corrupt"] == 1
    out, from_cache = cached.call(x)  # the engine's own, signed entry is a hit
    assert from_cache
    torch.testing.assert_close(out, engine(x))
    other = motorpool.CachedEngine(engine, store, hmac_key=b"another key")
    assert other.call(x)[1] is False
