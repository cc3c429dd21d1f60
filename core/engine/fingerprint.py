"""The one model fingerprint: what decides what a model computes, as one hash, for the artifact cache, the
decision cache and the prediction cache; and the same for calibration data.

A model's fingerprint covers

- every parameter and buffer (names, dtypes, shapes, bytes);
- every submodule's class, its ``extra_repr`` and its plain attributes (``self.scale = 3``, flags, tuples,
  strings; tensors that are neither parameters nor buffers by their bytes);
- the code that runs: every function defined on the classes of its submodules (``forward`` and the methods
  it calls, up to but excluding ``torch.nn`` itself), methods patched onto an instance, a GraphModule's
  generated code; each function by its bytecode, constants, the values its closure holds and the
  module-level names it reads (a global ``SCALE``), so editing a helper in a notebook changes it;
- the forward and forward-pre hooks on every submodule, and the global ones.

Anything it cannot see (a C extension's state) is what the verified cache hit is for: a cache entry is run
on the examples and compared with the model before it is returned.
"""

from __future__ import annotations

import hashlib
import inspect
import types
from typing import Any

import numpy as np
import torch

#: attributes of nn.Module that hold its machinery, not its state (hooks are hashed on their own)
_MODULE_INTERNALS = frozenset({
    "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_is_full_backward_hook",
    "_compiled_call_impl", "training",
})
_MAX_DEPTH = 6


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hex SHA-256 of everything that decides what ``model`` computes (see the module docstring)."""
    h = hashlib.sha256()
    seen_classes: set[type] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        cls = type(module)
        h.update(f"\nmodule {name}:{cls.__module__}.{cls.__qualname__}|{module.extra_repr()}|".encode())
        code = getattr(module, "code", None)  # torch.fx.GraphModule / unlifted torch.export modules
        if isinstance(code, str):
            h.update(code.encode())
        if cls not in seen_classes:
            seen_classes.add(cls)
            _hash_class(h, cls)
        for key in sorted(k for k in vars(module) if k not in _MODULE_INTERNALS):
            h.update(f"attr {key}=".encode())
            _hash_value(h, vars(module)[key], 0)
        for kind in ("_forward_pre_hooks", "_forward_hooks"):
            hooks = getattr(module, kind, None) or {}
            for hook in hooks.values():
                h.update(f"hook {kind}".encode())
                _hash_value(h, hook, 0)
    for kind in ("_global_forward_pre_hooks", "_global_forward_hooks"):
        for hook in (getattr(torch.nn.modules.module, kind, None) or {}).values():
            h.update(f"global {kind}".encode())
            _hash_value(h, hook, 0)
    for kind, named in (("param", model.named_parameters(remove_duplicate=False)),
                        ("buffer", model.named_buffers(remove_duplicate=False))):
        for name, tensor in named:
            h.update(f"{kind}:{name}".encode())
            _hash_tensor(h, tensor)
    return h.hexdigest()


def _hash_class(h, cls: type) -> None:
    for klass in cls.__mro__:
        if klass is object or klass.__module__ == "builtins" or klass.__module__.startswith("torch."):
            continue  # torch's own classes change with torch's version, which the keys hold anyway
        h.update(f"class {klass.__module__}.{klass.__qualname__}".encode())
        for key in sorted(vars(klass)):
            value = vars(klass)[key]
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                value = value.fget
            if isinstance(value, types.FunctionType):
                h.update(f"def {key}".encode())
                _hash_function(h, value, 0)


def _hash_function(h, fn: types.FunctionType, depth: int) -> None:
    code = fn.__code__
    _hash_code(h, code)
    for cell in fn.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        h.update(b"cell")
        _hash_value(h, contents, depth + 1)
    for default in fn.__defaults__ or ():
        _hash_value(h, default, depth + 1)
    for name in sorted(_global_names(code)):
        if name in fn.__globals__:
            value = fn.__globals__[name]
            if isinstance(value, (int, float, bool, str, bytes, type(None), tuple, torch.Tensor)):
                h.update(f"global {name}=".encode())
                _hash_value(h, value, depth + 1)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _hash_code(h, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _hash_code(h, const)
        elif isinstance(const, frozenset):  # its repr's order follows the process's string hash seed
            h.update(repr(sorted(map(repr, const))).encode())
        else:
            h.update(repr(const).encode())


def _hash_value(h, value: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        h.update(b"<deep>")
        return
    if isinstance(value, torch.Tensor):
        _hash_tensor(h, value)
    elif isinstance(value, (bool, int, float, complex, str, bytes, type(None))):
        h.update(f"{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        h.update(f"{type(value).__name__}[{len(items)}]".encode())
        for item in items:
            _hash_value(h, item, depth + 1)
    elif isinstance(value, dict):
        h.update(f"dict[{len(value)}]".encode())
        for k in sorted(value, key=repr):
            _hash_value(h, k, depth + 1)
            _hash_value(h, value[k], depth + 1)
    elif isinstance(value, types.MethodType):
        h.update(b"method")
        _hash_value(h, value.__func__, depth + 1)
    elif isinstance(value, types.FunctionType):
        h.update(f"fn {value.__qualname__}".encode())
        _hash_function(h, value, depth)
    elif isinstance(value, torch.nn.Module):
        h.update(f"module {type(value).__qualname__}".encode())  # its own state is hashed as a submodule
    elif isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        h.update(str(value).encode())
    elif inspect.isclass(value):
        h.update(f"class {value.__module__}.{value.__qualname__}".encode())
    else:
        text = repr(value)
        # a default object repr holds an address that changes every process: keep only the type then
        h.update(f"{type(value).__module__}.{type(value).__qualname__}".encode())
        if " at 0x" not in text and "object at" not in text:
            h.update(text.encode())


def _hash_tensor(h, tensor: torch.Tensor) -> None:
    t = tensor.detach()
    h.update(f"|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.device.type == "meta" or not t.numel():
        return
    try:
        t = t.cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)
        h.update(memoryview(data.numpy()))
    except (RuntimeError, TypeError):  # quantized or otherwise unviewable: its values
        h.update(repr(t.tolist()).encode() if hasattr(t, "tolist") else repr(t).encode())


def calibration_fingerprint(calibration: Any) -> str | None:
    """A hash of the calibration data, ``"none"`` without any, or None when it cannot be read twice."""
    if calibration is None:
        return "none"
    if not isinstance(calibration, (list, tuple)):
        return None  # an iterator or loader: hashing it would consume what the backend needs
    h = hashlib.sha256()

    def visit(item: Any) -> bool:
        if isinstance(item, torch.Tensor):
            h.update(b"t"); _hash_tensor(h, item)
        elif isinstance(item, np.ndarray):
            h.update(b"n"); _hash_tensor(h, torch.from_numpy(np.ascontiguousarray(item)))
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
