"""Where the prediction cache keeps its entries: the :class:`Store` interface, an in-process :class:`LRUStore`
bounded by entries and bytes, and a :class:`RedisStore` shared by several processes."""

from __future__ import annotations

import abc
import threading
import time
import warnings
from collections import OrderedDict
from typing import Any, Callable

from .circuit_breaker import CircuitBreaker


class Store(abc.ABC):
    """Where a :class:`CachedEngine` keeps its entries: bytes under string keys."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` (a store may decline, e.g. a value larger than it holds)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Forget ``key`` (no error when absent)."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Forget every entry this store holds."""


class LRUStore(Store):
    """An in-process store bounded by entry count and total bytes, evicting the least recently used first.

    A value larger than ``max_bytes`` is not stored. Thread-safe.
    """

    def __init__(self, max_entries: int = 4096, max_bytes: int = 256 << 20):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"LRUStore: max_entries and max_bytes must be positive, got {max_entries}, {max_bytes}")
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def set(self, key: str, value: bytes) -> None:
        size = len(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._data[key] = value
            self._bytes += size
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= len(dropped)
                self.evictions += 1

    def delete(self, key: str) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __repr__(self) -> str:
        return (f"<motorpool.LRUStore {len(self._data)}/{self.max_entries} entries, "
                f"{self._bytes}/{self.max_bytes} bytes>")


class RedisStore(Store):
    """A store in Redis (redis-py), shared by every process that points at the same server.

    ``url`` like ``redis://host:6379/0`` or an existing ``client``; keys are prefixed with ``prefix``;
    ``ttl_s`` makes entries expire. A Redis that cannot be reached makes lookups misses (counted in
    ``errors``, warned once): the cache never turns a working model into a failing one. After
    ``failure_threshold`` failures in a row a circuit breaker opens: for ``retry_after_s`` every call skips
    Redis at once (counted in ``skipped``), then one call probes it again. So a Redis that accepts
    connections but never answers costs a few socket timeouts, not two per call. ``stats()`` has the counters.
    The client motorpool builds does not retry a failed command (redis-py's default retries with backoff).
    """

    def __init__(self, url: str | None = "redis://localhost:6379/0", *, client: Any = None,
                 prefix: str = "motorpool:", ttl_s: float | None = None, socket_timeout_s: float = 1.0,
                 failure_threshold: int = 3, retry_after_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if client is None:
            try:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry
            except ImportError as exc:
                raise ImportError('RedisStore needs redis-py: pip install "motorpool[redis]"') from exc
            client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                          socket_connect_timeout=socket_timeout_s, retry=Retry(NoBackoff(), 0))
        self.client = client
        self.prefix = prefix
        self.ttl_ms = None if ttl_s is None else max(1, int(ttl_s * 1000))
        self.breaker = CircuitBreaker(failure_threshold, retry_after_s, clock=clock)
        self._warned = False

    @property
    def errors(self) -> int:
        return self.breaker.failures

    @property
    def skipped(self) -> int:
        return self.breaker.skipped

    def stats(self) -> dict[str, Any]:
        return {"errors": self.breaker.failures, **self.breaker.stats()}

    def _failed(self, what: str, exc: Exception) -> None:
        opened = self.breaker.failed()
        if not self._warned:
            self._warned = True
            warnings.warn(f"RedisStore: {what} failed ({type(exc).__name__}: {exc}); treating as a miss",
                          RuntimeWarning, stacklevel=3)
        if opened:
            warnings.warn(f"RedisStore: {self.breaker.failures} failures; skipping Redis for "
                          f"{self.breaker.retry_after_s:g} s before trying it again", RuntimeWarning, stacklevel=3)

    def _call(self, what: str, fn, *args, **kwargs):
        if not self.breaker.allow():
            return None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds; each is a miss
            self._failed(what, exc)
            return None
        self.breaker.succeeded()
        return result

    def get(self, key: str) -> bytes | None:
        return self._call("GET", self.client.get, self.prefix + key)

    def set(self, key: str, value: bytes) -> None:
        self._call("SET", self.client.set, self.prefix + key, value, px=self.ttl_ms)

    def delete(self, key: str) -> None:
        self._call("DEL", self.client.delete, self.prefix + key)

    def clear(self) -> None:
        """Delete every key under this store's prefix (SCAN, never KEYS: safe on a busy server)."""
        batch = []
        for k in self.client.scan_iter(match=self.prefix + "*", count=500):
            batch.append(k)
            if len(batch) >= 500:
                self.client.delete(*batch)
                batch.clear()
        if batch:
            self.client.delete(*batch)

    def __repr__(self) -> str:
        return f"<motorpool.RedisStore {self.client!r} prefix={self.prefix!r}>"
