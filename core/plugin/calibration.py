"""Calibration data for static int8: the user's iterable, checked, as torch tuples or as NumPy feeds.

Every backend that calibrates (torch.ao, ONNX Runtime, NNCF, TensorRT) reads it through these, so a bad item
gets the same :class:`~motorpool.InputError` whichever backend meets it first.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import numpy as np
import torch

from .errors import InputError, UnsupportedError

#: at most this many calibration batches are used (observers converge long before)
MAX_CALIBRATION_BATCHES = 256


def calibration_batches(calibration: Iterable[Any], n_inputs: int, *, spec=None,
                        limit: int = MAX_CALIBRATION_BATCHES) -> list[tuple[torch.Tensor, ...]]:
    """The calibration iterable as a list of input tuples, checked.

    Each item is what the model takes: a tensor (or NumPy array) for a one-input model, or a tuple/list
    of them. Raises :class:`InputError` naming the item that does not fit (and the spec when given).
    """
    if calibration is None:
        raise InputError("calibration: static int8 needs an iterable of example inputs, got None",
                         input="calibration", expected="iterable of input batches", got=None)
    if isinstance(calibration, (torch.Tensor, np.ndarray)):
        raise InputError("calibration: expected an iterable of input batches (e.g. a list of tensors), got a "
                         "single array; wrap it in a list: calibration=[x]", input="calibration",
                         expected="iterable of batches", got=type(calibration).__name__)
    batches = []
    for i, item in enumerate(calibration):
        if i >= limit:
            break
        items = item if isinstance(item, (tuple, list)) else (item,)
        converted = []
        for x in items:
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(np.ascontiguousarray(x))
            if not isinstance(x, torch.Tensor):
                raise InputError(f"calibration item {i}: expected tensors or NumPy arrays, got "
                                 f"{type(x).__name__}", input="calibration", expected="tensor", got=type(x).__name__)
            converted.append(x)
        if len(converted) != n_inputs:
            raise InputError(f"calibration item {i}: {len(converted)} inputs, the model takes {n_inputs}",
                             input="calibration", expected=n_inputs, got=len(converted))
        if spec is not None:
            try:
                spec.check(tuple(converted))
            except InputError as exc:
                raise InputError(f"calibration item {i}: {exc}", input="calibration",
                                 expected=exc.expected, got=exc.got) from exc
        batches.append(tuple(converted))
    if not batches:
        raise InputError("calibration: the iterable is empty; static int8 needs at least one batch",
                         input="calibration", expected="at least one batch", got=0)
    return batches


def materialize_calibration(calibration: Any) -> Any:
    """A one-shot iterable (generator, DataLoader iterator) as a list, so that every candidate backend and
    the verification see the same batches. Lists and tuples pass through; None stays None."""
    if calibration is None or isinstance(calibration, (list, tuple, torch.Tensor, np.ndarray)):
        return calibration
    return list(itertools.islice(iter(calibration), MAX_CALIBRATION_BATCHES))


def calibration_feeds(spec, calibration, *, limit: int, backend: str, what: str) -> list[list]:
    """Up to ``limit`` calibration items as NumPy feeds in spec order; an empty calibration set is an error."""
    items = []
    for item in calibration:
        items.append(numpy_feeds(spec, item))
        if len(items) >= limit:
            break
    if not items:
        raise UnsupportedError(f"calibration is empty: {what} needs at least one example input tuple",
                               backend=backend)
    return items


def numpy_feeds(spec, item: Any) -> list:
    """One calibration item (a tensor, an array or a tuple of them) as NumPy arrays in spec order."""
    values = item if isinstance(item, (tuple, list)) else (item,)
    if len(values) != len(spec.inputs):
        raise InputError(f"calibration item has {len(values)} input(s); the model takes {len(spec.inputs)} "
                         f"{spec.describe()}", expected=len(spec.inputs), got=len(values))
    out = []
    for t, v in zip(spec.inputs, values):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        v = np.asarray(v)
        if v.dtype.name != t.dtype:
                raise InputError(f"calibration input {t.name!r}: expected dtype {t.dtype}, got {v.dtype.name}",
                             input=t.name, expected=t.dtype, got=v.dtype.name)
        out.append(np.ascontiguousarray(v))
    return out
