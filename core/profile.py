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

import json
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree

from .errors import UnsupportedError

STAGES = ("check", "convert_in", "backend", "convert_out", "unflatten")
STAGE_LABELS = {"check": "input check", "convert_in": "input conversion", "backend": "backend",
                "convert_out": "output conversion", "unflatten": "output structure"}


@dataclass(frozen=True)
class OperatorStat:
    """One operator (or operator type) in a backend profiler's table. Times are totals over ``calls`` runs."""

    name: str
    calls: int
    total_ms: float
    self_ms: float | None = None
    #: share of the profiled time spent in this operator (self time where the profiler gives it)
    percent: float | None = None
    kind: str | None = None  # an operator type where ``name`` is a node name (ONNX Runtime, OpenVINO)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# -- the backends' own profilers, turned into OperatorStat tables --------------------------------------------


def torch_operator_profile(run: Callable[[list[Any]], Any], inputs: list[Any], *, top: int = 10, calls: int = 5,
                           device: str = "cpu") -> list[OperatorStat]:
    """torch.profiler over ``calls`` runs, top-level operators by self time (CPU, plus CUDA on a GPU)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    on_cuda = device.startswith("cuda")
    if on_cuda:
        activities.append(ProfilerActivity.CUDA)
    run(inputs)  # keep one-time work (lazy init, autotuning) out of the table
    with torch_profile(activities=activities, record_shapes=False) as prof:
        for _ in range(calls):
            run(inputs)
        if on_cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if on_cuda:
        key = "self_device_time_total" if hasattr(events[0] if len(events) else None, "self_device_time_total") \
            else "self_cuda_time_total"
    else:
        key = "self_cpu_time_total"
    total_self = sum(getattr(e, key, 0) for e in events) or 1
    rows = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    return [OperatorStat(e.key, int(e.count), (e.cpu_time_total if not on_cuda else getattr(e, key, 0)) / 1e3,
                         getattr(e, key, 0) / 1e3, 100.0 * getattr(e, key, 0) / total_self) for e in rows]


def summarize_ort_profile(path: str | Path, *, top: int = 10) -> list[OperatorStat]:
    """ONNX Runtime's profile JSON (``SessionOptions.enable_profiling``; ``session.end_profiling()`` returns its
    path) -> the nodes that took the most time, grouped by node name. ``kind`` is the node's op type."""
    events = json.loads(Path(path).read_text())
    if isinstance(events, dict):  # newer runtimes wrap the trace events
        events = events.get("traceEvents", [])
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    kinds: dict[str, str] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        name = ev["name"][: -len("_kernel_time")]
        total[name] += float(ev.get("dur", 0)) / 1e3  # microseconds
        count[name] += 1
        kinds[name] = str(ev.get("args", {}).get("op_name", ""))
    return _table(total, count, kinds, top)


def summarize_openvino_counters(profiling_infos: Iterable[Iterable[Any]], *, top: int = 10) -> list[OperatorStat]:
    """OpenVINO per-layer counters (``InferRequest.profiling_info`` after each run, with the ``PERF_COUNT``
    property on) -> the layers that took the most time. ``kind`` is the node type and its executed kernel."""
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    kinds: dict[str, str] = {}
    for run in profiling_infos:
        for info in run:
            status = str(getattr(info, "status", ""))
            if "NOT_RUN" in status or "OPTIMIZED_OUT" in status:
                continue
            real = getattr(info, "real_time", None)
            ms = real.total_seconds() * 1e3 if hasattr(real, "total_seconds") else float(real or 0) / 1e3
            name = str(info.node_name)
            total[name] += ms
            count[name] += 1
            kinds[name] = f"{info.node_type}/{getattr(info, 'exec_type', '')}".rstrip("/")
    return _table(total, count, kinds, top)


def _table(total: dict[str, float], count: dict[str, int], kinds: dict[str, str], top: int) -> list[OperatorStat]:
    whole = sum(total.values()) or 1.0
    rows = sorted(total, key=lambda n: total[n], reverse=True)[:top]
    return [OperatorStat(n, count[n], total[n], total[n], 100.0 * total[n] / whole, kinds.get(n) or None)
            for n in rows]
