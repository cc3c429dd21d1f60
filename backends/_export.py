"""Graph capture shared by the ONNX Runtime and OpenVINO backends.

Both runtimes see the model through :class:`FlatOutputs`, which returns the model's outputs flattened in
torch pytree order, so the runtime's output list is exactly what the Engine unflattens with the model's
treespec (dict outputs, nested tuples).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
import torch.utils._pytree as pytree


class FlatOutputs(torch.nn.Module):
    """``model`` with its outputs flattened to a tuple in pytree order."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        # A new module starts in training mode, and the TorchScript ONNX exporter restores the wrapper's mode
        # recursively after exporting: the user's eval model would come back in training mode (dropout on).
        self.train(model.training)

    def forward(self, *inputs):
        return tuple(pytree.tree_flatten(self.model(*inputs))[0])


def output_count(model: torch.nn.Module, examples: tuple) -> int:
    with torch.inference_mode():
        return len(pytree.tree_flatten(model(*examples))[0])


def capture_inputs(spec, examples: tuple) -> tuple[torch.Tensor, ...]:
    """Inputs to capture a graph from: size >= 2 on every dynamic dimension.

    torch.export specialises sizes 0 and 1, so a batch-1 example would pin the batch; fresh random inputs
    of the spec at size 2 keep every named dimension dynamic.
    """
    if not spec.dynamic_dims:
        return tuple(examples)
    sizes = {name: max(2, spec.example_sizes.get(name, 2)) for name in spec.dynamic_dims}
    return tuple(spec.random_inputs(sizes=sizes, device=spec.device))


def export_flat_program(model: torch.nn.Module, spec, examples: tuple) -> "torch.export.ExportedProgram":
    """``torch.export`` of :class:`FlatOutputs` (model), with the spec's named dynamic dimensions."""
    from torch.export import Dim

    dims = {name: Dim(_dim_identifier(name), min=1) for name in spec.dynamic_dims}
    per_input = tuple({axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} or None
                      for t in spec.inputs)
    # FlatOutputs.forward takes *inputs: its dynamic shapes are one entry holding the per-input tuple
    dynamic_shapes = (per_input,) if spec.dynamic_dims else None
    with quiet_exporters():
        return torch.export.export(FlatOutputs(model), capture_inputs(spec, examples), dynamic_shapes=dynamic_shapes)


def _dim_identifier(name: str) -> str:
    # torch.export.Dim names must be Python identifiers
    ident = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return ident if ident and not ident[0].isdigit() else f"d_{ident}"


@contextlib.contextmanager
def quiet_loggers(*names: str):
    """Only errors from these loggers for the duration."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def quiet_exporters():
    """Silence the exporters' chatter (missing torchvision ops, tracer notes) for the duration."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with quiet_loggers("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript",
                           "torch._dynamo", "torch._subclasses"):
            yield


def first_line(exc: BaseException, limit: int = 400) -> str:
    """A short, one-line reason for a report: the exception type and the first line of its message."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if len(line) > limit:
        line = line[:limit] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def calibration_feeds(spec, calibration, *, limit: int, backend: str, what: str) -> list[list]:
    """Up to ``limit`` calibration items as NumPy feeds in spec order; an empty calibration set is an error."""
    items = []
    for item in calibration:
        items.append(numpy_feeds(spec, item))
        if len(items) >= limit:
            break
    if not items:
        from motorpool import UnsupportedError

        raise UnsupportedError(f"calibration is empty: {what} needs at least one example input tuple",
                               backend=backend)
    return items


def numpy_feeds(spec, item: Any) -> list:
    """One calibration item (a tensor, an array or a tuple of them) as NumPy arrays in spec order."""
    import numpy as np

    values = item if isinstance(item, (tuple, list)) else (item,)
    if len(values) != len(spec.inputs):
        from motorpool import InputError

        raise InputError(f"calibration item has {len(values)} input(s); the model takes {len(spec.inputs)} "
                         f"{spec.describe()}", expected=len(spec.inputs), got=len(values))
    out = []
    for t, v in zip(spec.inputs, values):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        v = np.asarray(v)
        if v.dtype.name != t.dtype:
            from motorpool import InputError

            raise InputError(f"calibration input {t.name!r}: expected dtype {t.dtype}, got {v.dtype.name}",
                             input=t.name, expected=t.dtype, got=v.dtype.name)
        out.append(np.ascontiguousarray(v))
    return out
