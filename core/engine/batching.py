"""Static batching: run an iterable of samples through an engine in batches, results in order.

Also the row-level helpers the dynamic batcher shares: joining requests along dimension 0, padding a short
batch for an engine whose batch size is fixed, and splitting a model's output structure back per request.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..plugin.errors import InputError, UnsupportedError
from ..plugin.spec import BATCH, InputSpec

#: batch size ``map`` uses on an engine with a dynamic batch when none is given
DEFAULT_BATCH_SIZE = 32

Array = Any  # torch.Tensor | np.ndarray


class BatchLayout:
    """How requests for one engine are joined into batches.

    Every input must carry the batch along dimension 0. ``static_batch`` is the one batch size an engine
    compiled with ``dynamic_batch=False`` accepts (requests are padded up to it), or None.
    """

    def __init__(self, spec: InputSpec):
        self.spec = spec
        if spec.has_dynamic_batch:
            bad = [t.name for t in spec.inputs if not t.shape or t.shape[0] != BATCH]
            if bad:
                raise UnsupportedError(
                    f"cannot batch this engine: input(s) {', '.join(map(repr, bad))} do not have the batch as "
                    f"dimension 0 (spec {spec.describe()})")
            self.static_batch = None
            self.request_spec = spec
        else:
            firsts = {t.shape[0] if t.shape else None for t in spec.inputs}
            if len(firsts) != 1 or not isinstance(next(iter(firsts)), int):
                raise UnsupportedError(
                    f"cannot batch this engine: its batch is static but its inputs do not share one fixed "
                    f"size in dimension 0 (spec {spec.describe()})")
            self.static_batch = int(next(iter(firsts)))
            # requests may hold fewer rows than the fixed batch; they are padded when run
            self.request_spec = replace(spec, inputs=tuple(
                replace(t, shape=(BATCH,) + tuple(t.shape[1:])) for t in spec.inputs))

    def check(self, inputs: Sequence[Array]) -> int:
        """Raise :class:`InputError` unless ``inputs`` form one valid request; return its row count."""
        self.request_spec.check(inputs)
        rows = int(inputs[0].shape[0])
        if self.static_batch is not None and rows > self.static_batch:
            raise InputError(
                f"input {self.spec.inputs[0].name!r}: this engine's batch is fixed at {self.static_batch}; a "
                f"request may hold at most {self.static_batch} rows, got {rows}",
                input=self.spec.inputs[0].name, expected=self.static_batch, got=rows)
        return rows

    def padded(self, inputs: Sequence[Array], rows: int) -> list[Array]:
        """``inputs`` padded to the static batch (repeating the last row, a valid input); as-is otherwise."""
        if self.static_batch is None or rows == self.static_batch:
            return list(inputs)
        return [pad_rows(x, self.static_batch - rows) for x in inputs]


def concat(parts: Sequence[Array]) -> Array:
    """Join arrays along dimension 0 (torch or NumPy alike)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=0)
    return torch.cat(parts, dim=0)


def pad_rows(x: Array, count: int) -> Array:
    """``x`` with its last row repeated ``count`` more times (padding that is always a valid input)."""
    if count <= 0:
        return x
    if isinstance(x, np.ndarray):
        return np.concatenate([x, np.repeat(x[-1:], count, axis=0)], axis=0)
    return torch.cat([x, x[-1:].expand(count, *x.shape[1:])], dim=0)


class Unsplittable(UnsupportedError):
    """The model's outputs do not all carry the batch along dimension 0, so a batch cannot be split."""


def split_rows(output: Any, sizes: Sequence[int], total: int) -> list[Any]:
    """Split a model's output structure along dimension 0 into one structure per request.

    ``sizes`` are the requests' row counts in order; ``total`` is the batch actually run (with padding,
    which is dropped). Every leaf must be an array whose dimension 0 is ``total``.
    """
    leaves, tree = pytree.tree_flatten(output)
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, (torch.Tensor, np.ndarray)) or leaf.ndim == 0 or leaf.shape[0] != total:
            shape = list(getattr(leaf, "shape", [])) if hasattr(leaf, "shape") else type(leaf).__name__
            raise Unsplittable(f"output leaf {i} ({shape}) does not have the batch ({total}) as dimension 0, so "
                               "batched results cannot be split per request")
    out, start = [], 0
    if tree.is_leaf():  # one tensor out, the common case: no structure to rebuild per request
        leaf = leaves[0]
        for n in sizes:
            out.append(leaf[start:start + n])
            start += n
        return out
    for n in sizes:
        out.append(pytree.tree_unflatten([leaf[start:start + n] for leaf in leaves], tree))
        start += n
    return out


def take_row(output: Any, index: int) -> Any:
    """Row ``index`` of every leaf (drops dimension 0)."""
    leaves, tree = pytree.tree_flatten(output)
    return pytree.tree_unflatten([leaf[index] for leaf in leaves], tree)


# -- engine.map -------------------------------------------------------------------------------------------


def _as_request(item: Any, spec: InputSpec, index: int) -> tuple[tuple[Array, ...], bool]:
    """One item of ``map``'s iterable as a tuple of arrays with a batch dimension, and whether it was a
    single sample without one (its result then drops the batch dimension again)."""
    if isinstance(item, (torch.Tensor, np.ndarray)):
        item = (item,)
    elif isinstance(item, list):
        item = tuple(item)
    if not isinstance(item, tuple):
        raise InputError(f"map: item {index} is a {type(item).__name__}; expected a tensor or array (or a tuple "
                         f"of {len(spec)} for {spec.describe()})", input=f"item {index}",
                         expected="tensor or tuple of tensors", got=type(item).__name__)
    if len(item) != len(spec):
        raise InputError(f"map: item {index} holds {len(item)} value(s); the engine takes {len(spec)} "
                         f"{spec.describe()}", input=f"item {index}", expected=len(spec), got=len(item))
    ranks = set()
    for t, x in zip(spec.inputs, item):
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            raise InputError(f"map: item {index}, input {t.name!r}: expected a torch.Tensor or numpy.ndarray, got "
                             f"{type(x).__name__}", input=t.name, expected="Tensor", got=type(x).__name__)
        if x.ndim == t.rank - 1:
            ranks.add("sample")
        elif x.ndim == t.rank:
            ranks.add("batch")
        else:
            raise InputError(f"map: item {index}, input {t.name!r}: expected rank {t.rank} (a batch) or "
                             f"{t.rank - 1} (one sample) for {t.describe()}, got rank {x.ndim} {list(x.shape)}",
                             input=t.name, expected=t.shape, got=tuple(x.shape))
    if ranks == {"sample"}:
        return tuple(x[None] for x in item), True
    if ranks == {"batch"}:
        return item, False
    raise InputError(f"map: item {index} mixes single samples and batches across inputs; give every input "
                     "the batch dimension or none", input=f"item {index}", expected="consistent ranks", got=None)


def map_batches(engine: Any, inputs: Iterable[Any], batch_size: int | None = None) -> Iterator[Any]:
    """Run ``inputs`` through ``engine`` in batches of ``batch_size`` rows, yielding one result per item in order.

    Each item is a single sample (no batch dimension: its result has none either) or a small batch (its
    result has as many rows); a tuple or list for a model of several inputs; a DataLoader's batches work.
    Items are joined and split across batches so that every batch but the last is full. On an engine with
    a static batch the last batch is padded (with copies of its last row) and the padding is trimmed off;
    on a dynamic one it simply runs short. Lazy: it reads ``inputs`` only as far as it needs to.
    """
    layout = BatchLayout(engine.input_spec)
    if batch_size is None:
        batch_size = layout.static_batch or DEFAULT_BATCH_SIZE
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if layout.static_batch is not None and batch_size != layout.static_batch:
        raise ValueError(f"batch_size={batch_size}: this engine was compiled with a static batch of "
                         f"{layout.static_batch}; use batch_size={layout.static_batch} or recompile with "
                         "dynamic_batch=True")
    return _map(engine, layout, iter(inputs), batch_size)


class _Item:
    __slots__ = ("inputs", "rows", "single", "taken", "pieces", "need")

    def __init__(self, inputs: tuple, rows: int, single: bool):
        self.inputs, self.rows, self.single = inputs, rows, single
        self.taken = 0       # rows already placed in a batch
        self.pieces: list[Any] = []
        self.need = rows     # rows whose results have not come back yet


def _map(engine: Any, layout: BatchLayout, items: Iterator[Any], batch_size: int) -> Iterator[Any]:
    spec = engine.input_spec
    pending: deque[_Item] = deque()   # items whose rows are not all placed in a batch yet
    waiting: deque[_Item] = deque()   # items in order whose results are not all back yet
    queued_rows = 0
    exhausted = False
    index = 0
    while True:
        while not exhausted and queued_rows < batch_size:
            try:
                raw = next(items)
            except StopIteration:
                exhausted = True
                break
            request, single = _as_request(raw, spec, index)
            layout.request_spec.check(request)  # an empty batch fails here too: dimension 0 must be >= 1
            rows = int(request[0].shape[0])
            item = _Item(request, rows, single)
            pending.append(item)
            waiting.append(item)
            queued_rows += rows
            index += 1
        if queued_rows == 0:
            return
        # cut one batch of up to batch_size rows off the front of the pending items
        parts: list[tuple[_Item, int, int]] = []
        room = batch_size
        while pending and room:
            item = pending[0]
            n = min(room, item.rows - item.taken)
            parts.append((item, item.taken, n))
            item.taken += n
            room -= n
            if item.taken == item.rows:
                pending.popleft()
        rows = batch_size - room
        queued_rows -= rows
        columns = [concat([_slice(item.inputs[i], start, n) for item, start, n in parts]) for i in range(len(spec))]
        run = layout.padded(columns, rows)
        total = int(run[0].shape[0])
        out = engine(*run)
        for (item, _, n), piece in zip(parts, split_rows(out, [n for _, _, n in parts], total)
                                       if len(parts) > 1 or total != rows else [out]):
            item.pieces.append(piece)
            item.need -= n
        while waiting and waiting[0].need == 0:
            yield _assemble(waiting.popleft())


def _slice(x: Array, start: int, n: int) -> Array:
    return x if start == 0 and n == x.shape[0] else x[start:start + n]


def _assemble(item: _Item) -> Any:
    if len(item.pieces) == 1:
        result = item.pieces[0]
    else:
        leaves = [pytree.tree_flatten(p) for p in item.pieces]
        tree = leaves[0][1]
        result = pytree.tree_unflatten([concat(col) for col in zip(*(lv for lv, _ in leaves))], tree)
    return take_row(result, 0) if item.single else result
