"""What ``Runner.profile_operators`` returns: one :class:`OperatorStat` per operator, and the helpers that make
such a table from torch.profiler or from a runtime's own per-node timings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch


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


def operator_table(total: dict[str, float], count: dict[str, int], kinds: dict[str, str], top: int) -> list[OperatorStat]:
    whole = sum(total.values()) or 1.0
    rows = sorted(total, key=lambda n: total[n], reverse=True)[:top]
    return [OperatorStat(n, count[n], total[n], total[n], 100.0 * total[n] / whole, kinds.get(n) or None)
            for n in rows]
