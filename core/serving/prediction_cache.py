"""Prediction caching: answer a request seen before without running the model.

    >>> cached = motorpool.CachedEngine(engine)                       # in-process LRU
    >>> cached = motorpool.CachedEngine(engine, store=motorpool.RedisStore("redis://localhost:6379/0"))
    >>> y = cached(x)

The key is a BLAKE2b hash of every input's dtype, shape and bytes plus the engine's identity (backend,
device, precision, input spec, artifact checksums or options, and the outputs of a fixed probe input, so
two engines that compute different things never share entries). Entries are a small JSON header and raw
array bytes under a checksum: no pickle, and an entry that is corrupt, truncated or written for another
key reads as a miss, never as a wrong answer.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch.utils._pytree as pytree

from ..engine.batching import BatchLayout
from .dynamic_batcher import DynamicBatcher
from .entries import decode_entry, encode_entry, engine_identity, input_key
from .stores import LRUStore, Store

# -- the cached engine ---------------------------------------------------------------------------------------


class CachedEngine:
    """An engine (or a :class:`DynamicBatcher`, or anything called like the model with an engine behind it)
    that answers inputs seen before from ``store`` (default: an in-process :class:`LRUStore`).

    Called like the engine; returns what it returns (torch in -> torch out, NumPy in -> NumPy out).
    Counters ``hits``, ``misses`` and ``corrupt`` (entries rejected as corrupt or foreign) are kept.
    Concurrent calls that miss on the same key run the model once (``coalesced`` counts the ones that
    waited for another's answer instead).
    ``namespace`` separates otherwise identical engines on a shared store. ``hmac_key`` (bytes or str, the same
    in every process sharing the store) signs every entry; an entry without a valid signature (planted by
    someone who can write to the store but lacks the key) is a miss, counted in ``corrupt``.
    ``stats()["store"]`` holds the store's own counters where it keeps some (RedisStore's circuit breaker).
    """

    def __init__(self, engine: Any, store: Store | None = None, *, namespace: str = "",
                 hmac_key: bytes | str | None = None):
        self._secret = hmac_key.encode() if isinstance(hmac_key, str) else hmac_key
        if self._secret is not None and not self._secret:
            raise ValueError("hmac_key: an empty key signs nothing; pass a shared secret or None")
        self.target = engine
        self.engine = getattr(engine, "engine", engine)  # the engine behind a batcher
        self.store = store if store is not None else LRUStore()
        self.identity = engine_identity(self.engine, namespace=namespace)
        # through a batcher, a request may hold fewer rows than a static batch: check what the batcher takes
        self._check = (BatchLayout(self.engine.input_spec).check if isinstance(engine, DynamicBatcher)
                       else self.engine.input_spec.check)
        self._lock = threading.Lock()
        self.hits = self.misses = self.corrupt = self.uncacheable = self.coalesced = 0
        self._inflight: dict[str, Future] = {}

    @property
    def input_spec(self):
        return self.engine.input_spec

    def key(self, *inputs: Any) -> str:
        return input_key(self.identity, inputs)

    def lookup(self, *inputs: Any) -> tuple[str, bool, Any]:
        """``(key, hit, output)`` without running anything on a miss."""
        self._check(inputs)  # never cache (or answer) what the engine would refuse
        key = input_key(self.identity, inputs)
        data = self.store.get(key)
        as_numpy = all(isinstance(x, np.ndarray) for x in inputs)
        if data is not None:
            ok, output = decode_entry(key, data, as_numpy=as_numpy, secret=self._secret)
            if ok:
                with self._lock:
                    self.hits += 1
                device = getattr(self.engine, "device", "cpu")
                if not as_numpy and device != "cpu":  # entries hold host bytes; answer where the engine would
                    output = pytree.tree_map(lambda t: t.to(device), output)
                return key, True, output
            with self._lock:
                self.corrupt += 1
            self.store.delete(key)
        with self._lock:
            self.misses += 1
        return key, False, None

    def remember(self, key: str, output: Any) -> bytes | None:
        """Store ``output`` under ``key``; returns the entry, or None when the output cannot be cached."""
        entry = encode_entry(key, output, secret=self._secret)
        if entry is None:
            with self._lock:
                self.uncacheable += 1
            return None
        self.store.set(key, entry)
        return entry

    def __call__(self, *inputs: Any) -> Any:
        return self.call(*inputs)[0]

    def call(self, *inputs: Any) -> tuple[Any, bool]:
        """``(output, from_cache)``: like calling it, and whether the answer came from the cache."""
        key, hit, output = self.lookup(*inputs)
        if hit:
            return output, True
        # Concurrent misses on one key run the model once: the first computes, the others wait for its entry.
        with self._lock:
            leader = self._inflight.get(key)
            if leader is None:
                mine = self._inflight[key] = Future()
        if leader is not None:
            entry = leader.result()
            if entry is not None:
                ok, output = decode_entry(key, entry, as_numpy=all(isinstance(x, np.ndarray) for x in inputs),
                                          secret=self._secret)
                if ok:
                    with self._lock:
                        self.coalesced += 1
                    return output, True
            return self._compute(key, inputs), False  # the first one failed or could not cache: run our own
        entry = None
        try:
            output = self.target(*inputs)
            entry = self.remember(key, output)
            return output, False
        finally:
            mine.set_result(entry)
            with self._lock:
                self._inflight.pop(key, None)

    def _compute(self, key: str, inputs: tuple) -> Any:
        output = self.target(*inputs)
        self.remember(key, output)
        return output

    async def infer(self, *inputs: Any) -> Any:
        """Like calling it, for asyncio: a miss awaits the batcher's ``infer`` when the target is a batcher."""
        key, hit, output = self.lookup(*inputs)
        if hit:
            return output
        if hasattr(self.target, "infer"):
            output = await self.target.infer(*inputs)
        else:
            import asyncio
            output = await asyncio.get_running_loop().run_in_executor(None, lambda: self.target(*inputs))
        self.remember(key, output)
        return output

    def stats(self) -> dict[str, Any]:
        with self._lock:
            total = self.hits + self.misses
            out = {"hits": self.hits, "misses": self.misses, "coalesced": self.coalesced, "corrupt": self.corrupt,
                   "uncacheable": self.uncacheable, "hit_rate": self.hits / total if total else 0.0}
        store_stats = getattr(self.store, "stats", None)
        if callable(store_stats):
            out["store"] = store_stats()
        return out

    def __repr__(self) -> str:
        return f"<motorpool.CachedEngine {self.engine!r} store={self.store!r} hits={self.hits} misses={self.misses}>"
