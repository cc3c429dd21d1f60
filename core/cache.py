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

import abc
import hashlib
import json
import struct
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree

from .batching import BatchLayout
from .errors import InputError

MAGIC = b"MPC1"
_DIGEST = 16
_HEADER = struct.Struct(">4sI")  # magic, header length

# Raw-byte formats cached arrays may take; anything else (object arrays, ...) is never cached.
_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
           "uint64", "bool", "complex64", "complex128", "bfloat16"}


# -- stores --------------------------------------------------------------------------------------------------


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
    ``errors``, warned once): the cache never turns a working model into a failing one.
    """

    def __init__(self, url: str | None = "redis://localhost:6379/0", *, client: Any = None,
                 prefix: str = "motorpool:", ttl_s: float | None = None, socket_timeout_s: float = 1.0):
        if client is None:
            try:
                import redis
            except ImportError as exc:
                raise ImportError('RedisStore needs redis-py: pip install "motorpool[redis]"') from exc
            client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                          socket_connect_timeout=socket_timeout_s)
        self.client = client
        self.prefix = prefix
        self.ttl_ms = None if ttl_s is None else max(1, int(ttl_s * 1000))
        self.errors = 0
        self._warned = False

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            warnings.warn(f"RedisStore: {what} failed ({type(exc).__name__}: {exc}); treating as a miss",
                          RuntimeWarning, stacklevel=3)

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get(self.prefix + key)
        except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds; each is a miss
            self._failed("GET", exc)
            return None

    def set(self, key: str, value: bytes) -> None:
        try:
            self.client.set(self.prefix + key, value, px=self.ttl_ms)
        except Exception as exc:  # noqa: BLE001
            self._failed("SET", exc)

    def delete(self, key: str) -> None:
        try:
            self.client.delete(self.prefix + key)
        except Exception as exc:  # noqa: BLE001
            self._failed("DEL", exc)

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


# -- keys and entries ----------------------------------------------------------------------------------------


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype == torch.bfloat16:  # NumPy has no bfloat16: keep the bits
            return x.contiguous().view(torch.int16).numpy()
        return x.contiguous().numpy()
    return np.ascontiguousarray(x)


def _dtype_name(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return str(x.dtype).removeprefix("torch.")
    return x.dtype.name


def input_key(identity: str, inputs: Sequence[Any]) -> str:
    """The cache key of ``inputs`` for an engine of ``identity``: hex BLAKE2b of everything that matters."""
    h = hashlib.blake2b(digest_size=_DIGEST)
    h.update(identity.encode())
    h.update(len(inputs).to_bytes(4, "little"))
    for x in inputs:
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            raise InputError(f"cache: expected torch.Tensor or numpy.ndarray inputs, got {type(x).__name__}",
                             input=None, expected="Tensor", got=type(x).__name__)
        h.update(f"|{_dtype_name(x)}{tuple(x.shape)}|".encode())
        h.update(memoryview(_as_numpy(x)).cast("B"))
    return h.hexdigest()


def encode_entry(key: str, output: Any) -> bytes | None:
    """Bytes for a cache entry: magic, header length, JSON header, raw arrays, BLAKE2b of all before it.

    None when the output cannot be cached safely (a leaf that is not an array of a plain dtype, or an
    output structure pytree cannot describe).
    """
    leaves, tree = pytree.tree_flatten(output)
    try:
        tree_json = pytree.treespec_dumps(tree)
    except Exception:  # noqa: BLE001 - e.g. a custom output class: simply not cached
        return None
    metas, blobs = [], []
    for leaf in leaves:
        if not isinstance(leaf, (torch.Tensor, np.ndarray)):
            return None
        dtype = _dtype_name(leaf)
        if dtype not in _DTYPES:
            return None
        a = _as_numpy(leaf)
        metas.append({"dtype": dtype, "shape": list(a.shape), "nbytes": a.nbytes})
        blobs.append(memoryview(a).cast("B"))
    header = json.dumps({"key": key, "tree": tree_json, "leaves": metas}, separators=(",", ":")).encode()
    body = b"".join([_HEADER.pack(MAGIC, len(header)), header, *blobs])
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


def decode_entry(key: str, data: bytes, *, as_numpy: bool) -> tuple[bool, Any]:
    """``(True, output)`` for an intact entry written for ``key``; ``(False, None)`` for anything else."""
    try:
        if len(data) < _HEADER.size + _DIGEST:
            return False, None
        body, digest = memoryview(data)[:-_DIGEST], data[-_DIGEST:]
        if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
            return False, None
        magic, hlen = _HEADER.unpack_from(body)
        if magic != MAGIC:
            return False, None
        header = json.loads(bytes(body[_HEADER.size:_HEADER.size + hlen]))
        if header.get("key") != key:  # a foreign entry (another key, or a hash collision in the prefix)
            return False, None
        offset = _HEADER.size + hlen
        leaves = []
        for meta in header["leaves"]:
            dtype, shape, nbytes = meta["dtype"], tuple(int(s) for s in meta["shape"]), int(meta["nbytes"])
            if dtype not in _DTYPES:
                return False, None
            raw = body[offset:offset + nbytes]
            offset += nbytes
            if len(raw) != nbytes:
                return False, None
            if dtype == "bfloat16":
                t = torch.from_numpy(np.frombuffer(raw, dtype=np.int16).copy()).view(torch.bfloat16)
                leaves.append(t.reshape(shape).float().numpy() if as_numpy else t.reshape(shape))
                continue
            a = np.frombuffer(raw, dtype=np.dtype(dtype))
            if a.size != int(np.prod(shape, dtype=np.int64)):
                return False, None
            a = a.reshape(shape).copy()  # the caller owns a writable array, not a view of the entry
            leaves.append(a if as_numpy else torch.from_numpy(a))
        if offset != len(body):
            return False, None
        return True, pytree.tree_unflatten(leaves, pytree.treespec_loads(header["tree"]))
    except Exception:  # noqa: BLE001 - whatever is wrong with an entry, it is a miss
        return False, None


def engine_identity(engine: Any, *, namespace: str = "") -> str:
    """A fingerprint of what ``engine`` computes, so different engines never share cache entries.

    Backend, device, precision and input spec; the artifact's checksums when loaded from disk, else its
    compile options; and a hash of its outputs on one fixed pseudo-random input of its spec.
    """
    spec = engine.input_spec
    manifest = getattr(engine, "manifest", None) or {}
    parts = {
        "namespace": namespace,
        "backend": getattr(engine, "backend", type(engine).__name__),
        "device": getattr(engine, "device", None),
        "precision": getattr(engine, "precision", None),
        "spec": spec.to_dict(),
        "checksums": manifest.get("checksums"),
        "options": repr(sorted((getattr(engine, "options", None) or {}).items())),
    }
    h = hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=_DIGEST)
    probe = spec.random_inputs(generator=torch.Generator().manual_seed(20240607),
                               sizes={"batch": 2} if spec.has_dynamic_batch else None)
    for leaf in pytree.tree_leaves(engine(*probe)):
        h.update(memoryview(_as_numpy(leaf)).cast("B"))
    return h.hexdigest()


# -- the cached engine ---------------------------------------------------------------------------------------


class CachedEngine:
    """An engine (or a :class:`DynamicBatcher`, or anything called like the model with an engine behind it)
    that answers inputs seen before from ``store`` (default: an in-process :class:`LRUStore`).

    Called like the engine; returns what it returns (torch in -> torch out, NumPy in -> NumPy out).
    Counters ``hits``, ``misses`` and ``corrupt`` (entries rejected as corrupt or foreign) are kept.
    Concurrent calls that miss on the same key run the model once (``coalesced`` counts the ones that
    waited for another's answer instead).
    ``namespace`` separates otherwise identical engines on a shared store.
    """

    def __init__(self, engine: Any, store: Store | None = None, *, namespace: str = ""):
        self.target = engine
        self.engine = getattr(engine, "engine", engine)  # the engine behind a batcher
        self.store = store if store is not None else LRUStore()
        self.identity = engine_identity(self.engine, namespace=namespace)
        from .batcher import DynamicBatcher
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
            ok, output = decode_entry(key, data, as_numpy=as_numpy)
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
        entry = encode_entry(key, output)
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
                ok, output = decode_entry(key, entry, as_numpy=all(isinstance(x, np.ndarray) for x in inputs))
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
            return {"hits": self.hits, "misses": self.misses, "coalesced": self.coalesced, "corrupt": self.corrupt,
                    "uncacheable": self.uncacheable, "hit_rate": self.hits / total if total else 0.0}

    def __repr__(self) -> str:
        return f"<motorpool.CachedEngine {self.engine!r} store={self.store!r} hits={self.hits} misses={self.misses}>"
