"""The prediction cache's keys and entries: a BLAKE2b key from the inputs' dtypes, shapes and bytes and the
engine's identity; an entry is a small JSON header and raw array bytes under a checksum (no pickle), and one
that is corrupt, truncated or written for another key reads as a miss."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..plugin.errors import InputError


MAGIC = b"MPC1"
_DIGEST = 16
_HEADER = struct.Struct(">4sI")  # magic, header length

# Raw-byte formats cached arrays may take; anything else (object arrays, ...) is never cached.
_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
           "uint64", "bool", "complex64", "complex128", "bfloat16"}


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
