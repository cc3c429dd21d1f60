"""Padding requests into a few shape buckets, so that requests of nearby lengths can share a batch."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def pad_to_buckets(sizes: Sequence[int], *, axis: int = 1, value: float | Sequence[float] = 0,
                   inputs: Sequence[int] | None = None) -> Callable[[tuple], tuple]:
    """A ``pad`` function for :class:`DynamicBatcher`: grow dimension ``axis`` of the chosen inputs (all by
    default) to the smallest of ``sizes`` that fits, filling with ``value`` (one per input, or one for all).

    For a token model pass the mask among the inputs with value 0, so padded positions are masked out.
    A request longer than the largest size is left as it is (it forms its own group).
    """
    sizes = sorted(int(s) for s in sizes)
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes: expected positive bucket sizes, got {sizes!r}")

    def pad(request: tuple) -> tuple:
        chosen = range(len(request)) if inputs is None else inputs
        values = value if isinstance(value, (list, tuple)) else [value] * len(request)
        out = list(request)
        for i in chosen:
            x = out[i]
            length = x.shape[axis]
            target = next((s for s in sizes if s >= length), length)
            if target == length:
                continue
            shape = list(x.shape)
            shape[axis] = target - length
            if isinstance(x, np.ndarray):
                out[i] = np.concatenate([x, np.full(shape, values[i], dtype=x.dtype)], axis=axis)
            else:
                out[i] = torch.cat([x, torch.full(shape, values[i], dtype=x.dtype, device=x.device)], dim=axis)
        return tuple(out)

    return pad
