"""Timing an engine, and the objectives ``fastest`` chooses by.

An objective is written ``METRIC[@BATCH]``:

- ``p50`` (the default), ``p90``, ``p99``, ``mean``: latency of one call, at the example's batch size unless
  ``@BATCH`` names another (``p99@1``);
- ``throughput`` or ``throughput@32``: items per second at that batch size (the example's by default).

Timing warms up first (compiled runtimes allocate and specialise on the first calls), then repeats calls
until the budget is spent, stopping early once the median is known to within 1% (95% confidence, from
order statistics) when the objective is the median. Tail objectives (p90, p99) always spend the budget,
since a tail needs many samples.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..plugin.spec import InputSpec

_OBJECTIVE = re.compile(r"^(p50|p90|p99|mean|throughput)(?:@(\d+))?$")
METRICS = ("p50", "p90", "p99", "mean", "throughput")


@dataclass(frozen=True)
class Objective:
    metric: str = "p50"
    batch: int | None = None  # None: the example's batch size

    @classmethod
    def parse(cls, text: "str | Objective") -> "Objective":
        if isinstance(text, Objective):
            return text
        m = _OBJECTIVE.match(str(text).strip().lower())
        if not m:
            raise ValueError(f"objective {text!r} is not one of: p50, p90, p99, mean, throughput, optionally "
                             "with @BATCH (e.g. 'throughput@32', 'p99@1')")
        batch = int(m.group(2)) if m.group(2) else None
        if batch is not None and batch < 1:
            raise ValueError(f"objective {text!r}: the batch size must be at least 1")
        return cls(m.group(1), batch)

    def __str__(self) -> str:
        return self.metric + (f"@{self.batch}" if self.batch else "")

    @property
    def stops_early(self) -> bool:
        return self.metric in ("p50", "mean", "throughput")

    def score(self, figures: dict[str, Any]) -> float:
        """Lower is better: milliseconds for latency, minus items/s for throughput."""
        if self.metric == "throughput":
            return -float(figures["throughput_per_s"])
        return float(figures[f"{self.metric}_ms"])

    def describe(self, figures: dict[str, Any]) -> str:
        if self.metric == "throughput":
            return f"{figures['throughput_per_s']:.1f} items/s at batch {figures['batch']}"
        return f"{self.metric} {figures[f'{self.metric}_ms']:.3f} ms at batch {figures['batch']}"


def timing_inputs(spec: InputSpec, objective: Objective, *, seed: int = 1234) -> tuple[list[torch.Tensor], int]:
    """Fresh random inputs for timing, at the objective's batch size when the batch is dynamic."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {}
    if objective.batch is not None and spec.has_dynamic_batch:
        sizes["batch"] = objective.batch
    inputs = spec.random_inputs(generator=gen, sizes=sizes)
    batch = sizes.get("batch", spec.example_sizes.get("batch") or (int(inputs[0].shape[0]) if inputs and
                                                                    inputs[0].dim() else 1))
    return inputs, batch


def _synchronizer(device: str) -> Callable[[], None]:
    kind = device.split(":")[0]
    if kind == "cuda":
        return torch.cuda.synchronize
    if kind == "mps":
        return torch.mps.synchronize
    return lambda: None


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def median_ci(values: list[float]) -> float:
    """Half-width of a 95% confidence interval of the median, relative to the median (order statistics)."""
    n = len(values)
    if n < 10:
        return math.inf
    s = sorted(values)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = s[max(0, int(n / 2 - half))], s[min(n - 1, int(math.ceil(n / 2 + half)))]
    med = _percentile(s, 0.5)
    return (hi - lo) / 2 / med if med > 0 else math.inf


def measure(call: Callable[[], Any], *, budget_s: float, device: str = "cpu", batch: int = 1,
            objective: Objective = Objective(), min_reps: int = 10, max_reps: int = 100_000,
            target_ci: float = 0.01) -> dict[str, Any]:
    """Time ``call`` (one inference) within about ``budget_s`` seconds. Returns the figures.

    At least ``min_reps`` timed calls are made, unless a single call is so slow that three of them
    already take three budgets.
    """
    sync = _synchronizer(device)
    start = time.perf_counter()
    warmup = 0
    warm_until = start + min(0.5, 0.2 * budget_s)
    while warmup < 3 or (time.perf_counter() < warm_until and warmup < 50):
        call()
        sync()
        warmup += 1
    times: list[float] = []
    t_begin = time.perf_counter()
    deadline = t_begin + budget_s
    while len(times) < max_reps:
        t0 = time.perf_counter()
        call()
        sync()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        n = len(times)
        if n >= min_reps and t1 >= deadline:
            break
        if n >= 3 and t1 - t_begin >= 3 * budget_s:
            break
        if objective.stops_early and n >= 50 and n % 25 == 0 and median_ci(times) < target_ci:
            break
    return {**_figures(times, batch=batch), "warmup": warmup, "timed_s": time.perf_counter() - t_begin}


#: how long each engine's turn in :func:`measure_interleaved` runs before its calls count: the runtime that ran
#: before it may keep its worker threads spinning for milliseconds (ONNX Runtime's spin, OpenMP's blocktime,
#: TBB's arena), which a count of calls cannot cover on a 0.01 ms model
SETTLE_S = 0.005


def measure_interleaved(calls: dict[str, Callable[[], Any]], *, budget_s: float, device: str = "cpu",
                        batch: int = 1, rounds: int = 10, settle: int = 3, settle_s: float = SETTLE_S,
                        shuffle: bool = True, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Time several engines side by side: ``rounds`` rounds, in each of which every engine runs for its
    slice of the budget in turn, so that a load change on a shared machine hits every engine alike.

    The start of each turn is not counted (at least ``settle`` calls and ``settle_s`` seconds): another
    runtime's worker threads, still spinning after its own turn, would otherwise be charged to whichever
    engine runs next. With ``shuffle`` the order of the turns changes each round (``seed``), so that no engine
    always follows the same one. Returns each one's figures, as :func:`measure`.
    """
    sync = _synchronizer(device)
    for call in calls.values():  # warm each up once more: it may have just been loaded
        for _ in range(3):
            call()
        sync()
    slice_s = budget_s / (rounds * max(1, len(calls)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    rng = random.Random(seed)
    start = time.perf_counter()
    done = 0
    for done in range(1, rounds + 1):
        if shuffle:
            rng.shuffle(order)
        for name in order:
            times[name] += _turn(calls[name], sync, slice_s=slice_s, settle=settle, settle_s=settle_s)
        if time.perf_counter() - start >= 3 * budget_s:  # one call far slower than the budget planned
            break
    return {name: {**_figures(values, batch=batch), "rounds": done} for name, values in times.items()}


def _turn(call: Callable[[], Any], sync: Callable[[], None], *, slice_s: float, settle: int,
          settle_s: float) -> list[float]:
    """One engine's turn: settle, then time calls (at least 3) until the turn's slice is spent."""
    turn_start = time.perf_counter()
    n = 0
    while n < settle or time.perf_counter() - turn_start < settle_s:
        call()
        sync()
        n += 1
    turn_end = turn_start + max(slice_s, settle_s)
    times: list[float] = []
    while len(times) < 3 or time.perf_counter() < turn_end:
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _figures(values: list[float], *, batch: int) -> dict[str, Any]:
    """The figures of one engine's timed calls (seconds each), as ``measure`` and ``measure_interleaved`` report."""
    s = sorted(values)
    mean = sum(s) / len(s)
    return {
        "batch": batch, "reps": len(s), "p50_ms": _percentile(s, 0.5) * 1e3,
        "p90_ms": _percentile(s, 0.9) * 1e3, "p99_ms": _percentile(s, 0.99) * 1e3, "mean_ms": mean * 1e3,
        "min_ms": s[0] * 1e3, "throughput_per_s": batch / mean if mean > 0 else math.inf,
        "median_ci": median_ci(values),
    }
