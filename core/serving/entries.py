"""The prediction cache's keys and entries: a BLAKE2b key from the inputs' dtypes, shapes and bytes and the
engine's identity; an entry is a small JSON header and raw array bytes under a checksum (no pickle), and one
that is corrupt, truncated or written for another key reads as a miss."""

from __future__ import annotations

import hashlib
import hmac
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
        if x.is_neg() or x.is_conj():
            x = x.resolve_neg().resolve_conj()
        if x.dtype == torch.bfloat16:  # NumPy has no bfloat16: keep the bits
            return x.contiguous().view(torch.int16).numpy()
        return x.contiguous().numpy()
    return np.ascontiguousarray(x, dtype=x.dtype if x.dtype.isnative else x.dtype.newbyteorder("="))


def _mac(body, secret: bytes | None) -> bytes:
    """The entry's digest: BLAKE2b, keyed with ``secret`` when one is given (a MAC, like HMAC: an entry written
    without the secret never verifies)."""
    if secret is None:
        return hashlib.blake2b(body, digest_size=_DIGEST).digest()
    if len(secret) > hashlib.blake2b.MAX_KEY_SIZE:
        secret = hashlib.blake2b(secret).digest()
    return hashlib.blake2b(body, digest_size=_DIGEST, key=secret).digest()


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


def encode_entry(key: str, output: Any, *, secret: bytes | None = None) -> bytes | None:
    """Bytes for a cache entry: magic, header length, JSON header, raw arrays, BLAKE2b of all before it
    (keyed with ``secret`` when given, so only holders of the secret can write entries that verify).

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
    return body + _mac(body, secret)


def decode_entry(key: str, data: bytes, *, as_numpy: bool, secret: bytes | None = None) -> tuple[bool, Any]:
    """``(True, output)`` for an intact entry written for ``key`` (and signed with ``secret``, when given);
    ``(False, None)`` for anything else."""
    try:
        if len(data) < _HEADER.size + _DIGEST:
            return False, None
        body, digest = memoryview(data)[:-_DIGEST], data[-_DIGEST:]
        if not hmac.compare_digest(_mac(body, secret), digest):
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

    Backend, device, precision, input spec and options, and the engine's content: the artifact's checksums
    when it was loaded from disk, else the fingerprint of the model it was compiled from (weights, code,
    attributes). Two engines with the same outputs on some probe (argmax, thresholds) but different weights
    differ. Only an engine that carries neither falls back to a hash of its outputs on one fixed input.
    """
    spec = engine.input_spec
    manifest = getattr(engine, "manifest", None) or {}
    report = getattr(engine, "report", None)
    model = (getattr(report, "info", None) or {}).get("model_fingerprint")
    parts = {
        "namespace": namespace,
        "backend": getattr(engine, "backend", type(engine).__name__),
        "device": getattr(engine, "device", None),
        "precision": getattr(engine, "precision", None),
        "spec": spec.to_dict(),
        "checksums": manifest.get("checksums"),
        "model": None if manifest.get("checksums") else model,
        "options": json.dumps(getattr(engine, "options", None) or {}, sort_keys=True, default=repr),
    }
    h = hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=_DIGEST)
    if parts["checksums"] or parts["model"]:
        return h.hexdigest()
    probe = spec.random_inputs(generator=torch.Generator().manual_seed(20240607),
                               sizes={"batch": 2} if spec.has_dynamic_batch else None)
    for leaf in pytree.tree_leaves(engine(*probe)):
        h.update(memoryview(_as_numpy(leaf)).cast("B"))
    return h.hexdigest()
