"""The one model fingerprint: a hash of a model's weights and code, for the artifact cache, the decision cache
and anything else that must tell two models apart; and the same for calibration data."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import numpy as np
import torch


def model_fingerprint(model: "torch.nn.Module") -> str:
    """A hash of the model's weights and code. Equal for the same weights in the same classes."""
    h = hashlib.sha256()
    h.update(_code_identity(model).encode())
    for kind, named in (("param", model.named_parameters(remove_duplicate=False)),
                        ("buffer", model.named_buffers(remove_duplicate=False))):
        for name, tensor in named:
            _hash_tensor(h, f"{kind}:{name}", tensor)
    return h.hexdigest()


def _hash_tensor(h, label: str, tensor: "torch.Tensor") -> None:
    t = tensor.detach()
    h.update(f"{label}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.device.type == "meta":
        return
    t = t.cpu().contiguous()
    if t.numel():
        # a byte view hashes every dtype (bfloat16, quantized storages aside) without a NumPy detour
        data = t.reshape(-1).view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)
        h.update(memoryview(data.numpy()))


def _code_identity(model: "torch.nn.Module") -> str:
    """The classes of every submodule and what decides how each runs: source of forward, or fx code."""
    parts = []
    seen: set[type] = set()
    for name, module in model.named_modules():
        cls = type(module)
        parts.append(f"{name}:{cls.__module__}.{cls.__qualname__}")
        code = getattr(module, "code", None)  # torch.fx.GraphModule / unlifted torch.export modules
        if isinstance(code, str):
            parts.append(hashlib.sha256(code.encode()).hexdigest())
        elif cls not in seen:
            seen.add(cls)
            try:
                parts.append(hashlib.sha256(inspect.getsource(cls.forward).encode()).hexdigest())
            except (OSError, TypeError):  # classes built at runtime have no source: the repr still counts
                pass
        parts.append(module.extra_repr())
    return "\n".join(parts)


def calibration_fingerprint(calibration: Any) -> str | None:
    """A hash of the calibration data, ``"none"`` without any, or None when it cannot be read twice."""
    if calibration is None:
        return "none"
    if not isinstance(calibration, (list, tuple)):
        return None  # an iterator or loader: hashing it would consume what the backend needs
    h = hashlib.sha256()

    def visit(item: Any) -> bool:
        if isinstance(item, torch.Tensor):
            _hash_tensor(h, "t", item)
        elif isinstance(item, np.ndarray):
            _hash_tensor(h, "n", torch.from_numpy(np.ascontiguousarray(item)))
        elif isinstance(item, (list, tuple)):
            h.update(f"seq{len(item)}".encode())
            return all(visit(x) for x in item)
        elif isinstance(item, dict):
            h.update(f"dict{sorted(map(str, item))}".encode())
            return all(visit(item[k]) for k in sorted(item, key=str))
        elif isinstance(item, (int, float, str, bool)) or item is None:
            h.update(repr(item).encode())
        else:
            return False
        return True

    return h.hexdigest() if visit(calibration) else None
