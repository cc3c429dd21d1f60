"""Where a call's time goes: motorpool's own steps, and the backend's top operators.

    >>> result = motorpool.profile(engine, inputs)
    >>> print(result)          # input check / input conversion / backend / output conversion, then operators

The steps are timed by running the Engine's own steps one after the other (``_spec.check``,
``_convert_in``, ``run_flat``, ``_convert_out``, unflatten), exactly as ``Engine.__call__`` runs them, so the
split adds no code path of its own. The operators come from the backend's own profiler through
``Runner.profile_operators`` (torch.profiler for the PyTorch backends, ONNX Runtime's session profiling,
OpenVINO's per-layer counters); a runner without one says so instead.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch.utils._pytree as pytree

from ..plugin.errors import UnsupportedError
from ..plugin.operator_stats import OperatorStat

STAGES = ("check", "convert_in", "backend", "convert_out", "unflatten")
STAGE_LABELS = {"check": "input check", "convert_in": "input conversion", "backend": "backend",
                "convert_out": "output conversion", "unflatten": "output structure"}


@dataclass
class ProfileResult:
    backend: str
    device: str
    precision: str
    batch: int | None
    calls: int
    #: stage -> {"median_ms", "mean_ms", "share"}
    stages: dict[str, dict[str, float]]
    operators: list[OperatorStat] | None = None
    operators_note: str = ""
    profiled_runs: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def overhead_ms(self) -> float:
        """Median time per call spent outside the backend (motorpool's own steps)."""
        return sum(v["median_ms"] for k, v in self.stages.items() if k != "backend")

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "precision": self.precision, "batch": self.batch,
                "calls": self.calls, "stages": self.stages, "overhead_ms": self.overhead_ms,
                "operators": None if self.operators is None else [o.to_dict() for o in self.operators],
                "operators_note": self.operators_note, "profiled_runs": self.profiled_runs, "notes": self.notes}

    def __str__(self) -> str:
        lines = [f"{self.backend} on {self.device} ({self.precision}), batch {self.batch}, {self.calls} calls "
                 "(median per call):"]
        total = sum(v["median_ms"] for v in self.stages.values()) or 1.0
        for stage in STAGES:
            v = self.stages[stage]
            lines.append(f"  {STAGE_LABELS[stage]:18s} {v['median_ms']:9.4f} ms  {100 * v['median_ms'] / total:5.1f}%")
        if self.operators:
            lines.append(f"top operators ({self.operators_note or 'backend profiler'}, {self.profiled_runs} runs):")
            lines.append(f"  {'operator':44s} {'calls':>6s} {'total ms':>9s} {'self ms':>9s} {'%':>6s}")
            for o in self.operators:
                self_ms = f"{o.self_ms:9.3f}" if o.self_ms is not None else f"{'-':>9s}"
                pct = f"{o.percent:6.1f}" if o.percent is not None else f"{'-':>6s}"
                name = o.name if not o.kind or o.kind == o.name else f"{o.name} [{o.kind}]"
                lines.append(f"  {name[:44]:44s} {o.calls:6d} {o.total_ms:9.3f} {self_ms} {pct}")
        elif self.operators_note:
            lines.append(f"operators: {self.operators_note}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def profile(engine: Any, inputs: Sequence[Any] | None = None, *, calls: int = 50, warmup: int = 5, top: int = 10,
            operators: bool = True, operator_runs: int = 5) -> ProfileResult:
    """Split ``engine``'s calls into its steps and list the backend's top operators.

    ``inputs``: what the engine is called with (torch tensors or NumPy arrays); fresh random inputs of the
    engine's spec when omitted. ``calls`` timed calls follow ``warmup`` untimed ones. ``operators=False``
    skips the backend profiler.
    """
    if calls < 1:
        raise ValueError(f"calls: expected at least 1, got {calls}")
    if inputs is None:
        inputs = engine.input_spec.random_inputs()
    inputs = tuple(inputs)
    sizes = engine.input_spec.check(inputs)  # a bad input is an InputError now, not inside the timing loop
    as_numpy = all(isinstance(x, np.ndarray) for x in inputs)
    for _ in range(max(0, warmup)):
        engine(*inputs)
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    clock = time.perf_counter
    for _ in range(calls):
        t0 = clock()
        engine._spec.check(inputs)
        t1 = clock()
        native = engine._convert_in(inputs)
        t2 = clock()
        flat = engine.run_flat(native)
        t3 = clock()
        converted = engine._convert_out(flat, as_numpy)
        t4 = clock()
        pytree.tree_unflatten(converted, engine._tree)
        t5 = clock()
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            samples[stage].append(dt * 1e3)
    medians = {s: statistics.median(v) for s, v in samples.items()}
    total = sum(medians.values()) or 1.0
    stages = {s: {"median_ms": medians[s], "mean_ms": statistics.fmean(samples[s]), "share": medians[s] / total}
              for s in STAGES}
    result = ProfileResult(engine.backend, engine.device, engine.precision, sizes.get("batch"), calls, stages)
    if operators:
        try:
            result.operators = list(engine.runner.profile_operators(engine._convert_in(inputs), top=top,
                                                                    calls=operator_runs))
            result.profiled_runs = operator_runs
            result.operators_note = _profiler_name(engine.runner)
        except UnsupportedError as exc:
            result.operators_note = f"not available: {exc}"
    return result


def _profiler_name(runner: Any) -> str:
    return str(getattr(runner, "info", {}).get("profiler") or getattr(runner, "profiler_name", "") or
               "backend profiler")
