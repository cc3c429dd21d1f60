"""A gate's data split in two: a held-out part that calibrates static int8, and the rest, which the gate scores.

``compile(..., precision="auto", gate=gate)`` without ``calibration=`` still searches static int8 cells: they
calibrate on data the user gave, the gate's, but never on the samples that judge them. A quarter of the gate's
samples are held out (every 4th, evenly spaced over all batches in order, at most
:data:`MAX_HELD_OUT`); the gate then scores only the others, for every cell alike, so every cell is judged on
the same samples. When the input's batch dimension is fixed the engine takes only batches of that size, so
whole batches are held out instead (a quarter of them, evenly spaced). Fewer than :data:`HOLD_OUT_EVERY`
samples (or batches) cannot be split: :attr:`HeldOut.problem` says so, and the gate stays whole.

    >>> held = hold_out(gate, spec)
    >>> held.calibration, held.gate.samples, held.describe()["indices"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..plugin.spec import BATCH, InputSpec
from .gate import Gate

#: one sample (or batch) in this many is held out to calibrate
HOLD_OUT_EVERY = 4
#: at most this many samples (or batches) are held out: observers converge long before, the gate keeps the rest
MAX_HELD_OUT = 256


@dataclass(frozen=True)
class HeldOut:
    """The calibration batches held out of a gate (None when it is too small to split) and the gate that
    scores the rest (the whole gate then). ``indices`` are the held-out samples' positions in the gate's data
    (its batches concatenated), or the held-out batches' positions when ``unit`` is ``"batches"``."""

    calibration: list[tuple[torch.Tensor, ...]] | None
    gate: Gate
    unit: str
    indices: tuple[int, ...]
    problem: str | None = None

    @property
    def samples(self) -> int:
        """How many samples calibrate."""
        return sum(_rows(batch) for batch in self.calibration or ())

    def describe(self) -> dict[str, Any]:
        """What the report says about the split: where the calibration came from, how many, which."""
        return {"source": "gate (held out)", "samples": self.samples, "batches": len(self.calibration or ()),
                "unit": self.unit, "indices": list(self.indices), "scored_samples": self.gate.samples,
                "rule": f"every {HOLD_OUT_EVERY}th {self.unit[:-1]}, evenly spaced, at most {MAX_HELD_OUT}",
                **({"problem": self.problem} if self.problem else {})}


def hold_out(gate: Gate, spec: InputSpec) -> HeldOut:
    """Split ``gate``'s data into calibration batches and a gate over the rest (see the module docstring).

    Samples are held out when every input of ``spec`` has the dynamic batch as its first dimension (any
    number of rows is then a valid input); otherwise whole batches."""
    whole = not all(t.shape and t.shape[0] == BATCH for t in spec.inputs)
    unit = "batches" if whole else "samples"
    units = len(gate.batches) if whole else gate.samples
    count = min(MAX_HELD_OUT, units // HOLD_OUT_EVERY)
    if count == 0:
        return HeldOut(None, gate, unit, (), f"the gate's data has {units} {unit}, too few to hold out a "
                       f"calibration set (one in {HOLD_OUT_EVERY}) and still score the rest; pass calibration=")
    picked = tuple(sorted({(i * units) // count for i in range(count)}))
    masks = _batch_masks(gate, picked) if whole else _sample_masks(gate, picked)
    calibration = [_take(batch, mask) for batch, mask in zip(gate.batches, masks) if bool(mask.any())]
    return HeldOut(calibration, _scored_gate(gate, masks), unit, picked)


def _rows(batch: tuple[torch.Tensor, ...]) -> int:
    return int(batch[0].shape[0]) if batch[0].dim() else 1


def _sample_masks(gate: Gate, picked: tuple[int, ...]) -> list[torch.Tensor]:
    """Per gate batch, which of its rows are held out (``picked`` counts rows over all batches in order)."""
    flat = torch.zeros(gate.samples, dtype=torch.bool)
    flat[list(picked)] = True
    return list(flat.split([_rows(b) for b in gate.batches]))


def _batch_masks(gate: Gate, picked: tuple[int, ...]) -> list[torch.Tensor]:
    """Per gate batch, its rows all held out or all kept."""
    return [torch.full((_rows(b),), i in picked) for i, b in enumerate(gate.batches)]


def _take(batch: tuple[torch.Tensor, ...], mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rows of ``batch`` that ``mask`` flags (the batch itself when it flags them all: a fixed-size or
    0-d batch is never sliced)."""
    return batch if bool(mask.all()) else tuple(x[mask] for x in batch)


def _scored_gate(gate: Gate, masks: list[torch.Tensor]) -> Gate:
    """The same gate (metric, budget, output) over the rows not held out, labels split alike."""
    kept = [i for i, mask in enumerate(masks) if not bool(mask.all())]
    batches = [_take(gate.batches[i], ~masks[i]) for i in kept]
    labels = None
    if gate.labels is not None:
        labels = [_take((gate.labels[i],), ~masks[i])[0] for i in kept]
    return Gate(gate.metric, batches, gate.max_drop, labels=labels, output=gate.output)
