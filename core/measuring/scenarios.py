"""The scenarios, after MLPerf LoadGen's: how one engine is timed.

- **single-stream**: one query at a time, back to back; latency p50/p90/p99. Calls run in rounds after a
  warm-up, until the round medians agree within ``stability_tol`` (the figures are ``stable``) or the time
  budget is spent (they are not, and the result says so).
- **offline**: every query available at once; throughput (samples per second) from ``workers`` threads
  issuing batches back to back.
- **server**: queries of one sample arriving at Poisson times at a target rate, through a
  :class:`motorpool.DynamicBatcher`; latency is counted from each query's scheduled arrival. The highest rate
  whose p99 latency stays within ``p99_bound_ms`` with no query rejected or failed. The search starts from
  :func:`served_single_stream` (one query at a time through a batcher: what a tiny model really sustains
  once each query's trip through Python counts), and a trial whose issuer falls behind its schedule stops
  at its deadline and fails, so the search stays within its budget.
"""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..plugin.errors import UnsupportedError
from ..serving.dynamic_batcher import DynamicBatcher
from ..serving.requests import QueueFull

#: called after each finished step with a short description (progress bars)
StepCallback = Callable[[str], None]


# -- statistics ---------------------------------------------------------------------------------------------


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """count, mean, min, max and p50/p90/p99 (linear interpolation between order statistics)."""
    if not latencies_ms:
        raise ValueError("no latencies to summarize")
    a = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"count": int(a.size), "mean_ms": float(a.mean()), "min_ms": float(a.min()), "max_ms": float(a.max()),
            "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99)}


def settled(medians: Sequence[float], tol: float, window: int = 3) -> bool:
    """True when the last ``window`` round medians lie within ``tol`` (relative) of each other."""
    if len(medians) < window:
        return False
    last = medians[-window:]
    return max(last) <= min(last) * (1.0 + tol)


# -- inputs ---------------------------------------------------------------------------------------------------


def inputs_at_batch(spec, batch: int, inputs: Sequence[Any] | None = None, *, seed: int = 0) -> tuple[Any, ...]:
    """Inputs of ``spec`` with ``batch`` rows: rows of ``inputs`` taken in turn, or fresh random ones."""
    if not spec.has_dynamic_batch:
        fixed = [t.shape[0] for t in spec.inputs if t.rank and isinstance(t.shape[0], int)]
        if fixed and batch != fixed[0]:
            raise UnsupportedError(f"this engine's batch size is fixed at {fixed[0]}; cannot measure batch {batch}")
    if inputs is None:
        gen = torch.Generator().manual_seed(seed)
        return tuple(spec.random_inputs(generator=gen, sizes={"batch": batch}))
    out = []
    for x in inputs:
        n = x.shape[0]
        idx = np.arange(batch) % n
        out.append(x[idx] if isinstance(x, np.ndarray) else x[torch.from_numpy(idx)])
    return tuple(out)


def _one_row(inputs: Sequence[Any], row: int) -> tuple[Any, ...]:
    return tuple(x[row:row + 1] for x in inputs)


# -- memory ---------------------------------------------------------------------------------------------------


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak_mb`` is the highest seen while active.

    The kernel's own high-water mark (``ru_maxrss``) covers the whole process life, so it cannot tell one
    backend's peak from an earlier one's; sampling can (it may miss spikes shorter than ``interval_s``).
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRSS":
        try:
            import psutil
        except ImportError:  # psutil comes with motorpool[bench]; without it, the process-wide high-water mark
            self._proc = None
            self.peak_bytes = _maxrss_bytes()
            return self
        self._proc = psutil.Process()
        self.peak_bytes = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, name="motorpool-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)
            except Exception:  # noqa: BLE001 - a failed sample loses one point, not the run
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._proc is None:
            self.peak_bytes = max(self.peak_bytes, _maxrss_bytes())
        else:
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def _maxrss_bytes() -> int:
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    # kilobytes on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# -- scenarios --------------------------------------------------------------------------------------------------


def single_stream(engine: Any, inputs: Sequence[Any], *, budget_s: float = 2.0, warmup: int = 3,
                  min_calls: int = 20, stability_tol: float = 0.05, rounds_per_budget: int = 10) -> dict[str, Any]:
    """Latency of back-to-back calls on ``inputs``: warm-up, then rounds until the median settles."""
    clock = time.perf_counter
    start = clock()
    warm = []
    for _ in range(max(1, warmup)):
        t0 = clock()
        engine(*inputs)
        warm.append(clock() - t0)
    deadline = start + budget_s
    per_call = max(statistics.median(warm), 1e-6)
    round_calls = max(5, int(budget_s / rounds_per_budget / per_call))
    latencies: list[float] = []
    medians: list[float] = []
    stable = False
    while True:
        rnd = []
        for _ in range(round_calls):
            t0 = clock()
            engine(*inputs)
            t1 = clock()
            rnd.append((t1 - t0) * 1e3)
            if t1 >= deadline and latencies:  # the budget holds even when calls slow down mid-round
                break
        latencies += rnd
        if len(rnd) >= 5 or not medians:
            medians.append(statistics.median(rnd))
            # size the next round from what calls cost now, not from the warm-up
            round_calls = max(5, int(budget_s / rounds_per_budget / max(medians[-1] / 1e3, 1e-6)))
        stable = settled(medians, stability_tol)
        if (stable and len(latencies) >= min_calls) or clock() >= deadline:
            break
    out = latency_summary(latencies)
    batch = inputs[0].shape[0] if inputs and getattr(inputs[0], "ndim", 0) else 1
    out.update(throughput_per_s=batch * 1e3 / out["mean_ms"], stable=stable, rounds=len(medians),
               round_medians_ms=[round(m, 6) for m in medians], seconds=clock() - start)
    if not stable:
        if len(medians) >= 3:
            spread = (max(medians[-3:]) / min(medians[-3:]) - 1) * 100
            why = (f"the last 3 round medians differ by {spread:.0f}% (tolerance {stability_tol * 100:.0f}%); "
                   "the machine is busy")
        else:
            why = f"only {len(medians)} round(s) of {round_calls} calls fit (3 needed); raise the time budget"
        out["note"] = f"median did not settle within {budget_s:.1f}s: {why}"
    if out["count"] < 100:
        out.setdefault("note", f"p99 from {out['count']} calls: little more than the slowest call")
    return out


def offline(engine: Any, inputs: Sequence[Any], *, budget_s: float = 2.0, workers: int = 1,
            warmup: int = 2) -> dict[str, Any]:
    """Throughput with every query available at once: ``workers`` threads run batches back to back."""
    for _ in range(max(0, warmup)):
        engine(*inputs)
    batch = inputs[0].shape[0] if inputs and getattr(inputs[0], "ndim", 0) else 1
    done = [0] * workers
    errors: list[BaseException] = []
    stop_at = time.perf_counter() + budget_s

    def work(i: int) -> None:
        try:
            while time.perf_counter() < stop_at or done[i] == 0:
                engine(*inputs)
                done[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below, never lost in a thread
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    calls = sum(done)
    return {"calls": calls, "samples": calls * batch, "seconds": elapsed, "workers": workers,
            "throughput_per_s": calls * batch / elapsed}


def served_single_stream(engine: Any, one: Sequence[Any], *, budget_s: float = 0.3, min_calls: int = 5
                         ) -> dict[str, Any]:
    """One query at a time, back to back, through a DynamicBatcher that sends each at once: the queries per
    second a server scenario can sustain without batching, with the batcher's own per-query cost counted."""
    with DynamicBatcher(engine, max_delay_ms=0.0, name="motorpool-served-single-stream") as b:
        b.submit(*one).result()  # warm
        latencies: list[float] = []
        start = time.perf_counter()
        deadline = start + budget_s
        while time.perf_counter() < deadline or len(latencies) < min_calls:
            t0 = time.perf_counter()
            b.submit(*one).result()
            latencies.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
    return {**latency_summary(latencies), "throughput_per_s": len(latencies) / elapsed}


def server_trial(engine: Any, rows: Sequence[Sequence[Any]], rate: float, *, duration_s: float,
                 max_batch_size: int, max_delay_ms: float, seed: int = 0, max_queue: int = 100_000
                 ) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` per second for ``duration_s`` through a fresh DynamicBatcher. Queries not
    issued by 1.5 x ``duration_s`` (the issuer fell behind: the rate is past what this machine can issue)
    are ``late``, and the trial ends there."""
    rng = random.Random(seed)
    n = max(1, int(round(rate * duration_s)))
    arrivals, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        arrivals.append(t)
    latencies: list[float] = []
    errors: list[str] = []
    rejected = 0
    lock = threading.Lock()
    pending = threading.Semaphore(0)
    submitted = 0
    with DynamicBatcher(engine, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, max_queue=max_queue,
                        name="motorpool-bench-server") as batcher:
        start = time.perf_counter()
        stop = start + 1.5 * duration_s
        for i, due in enumerate(arrivals):
            if time.perf_counter() > stop:
                break
            wait = start + due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            scheduled = start + due

            def finished(fut, scheduled=scheduled):
                now = time.perf_counter()
                with lock:
                    exc = fut.exception()
                    if exc is None:
                        latencies.append((now - scheduled) * 1e3)
                    else:
                        errors.append(f"{type(exc).__name__}: {exc}")
                pending.release()

            try:
                fut = batcher.submit(*rows[i % len(rows)])
            except QueueFull:
                rejected += 1
                continue
            submitted += 1
            fut.add_done_callback(finished)
        for _ in range(submitted):
            pending.acquire()
        elapsed = time.perf_counter() - start
        stats = batcher.stats()
    out: dict[str, Any] = {"rate_per_s": rate, "queries": n, "completed": len(latencies), "rejected": rejected,
                           "late": n - submitted - rejected, "errors": len(errors), "seconds": elapsed,
                           "achieved_per_s": len(latencies) / elapsed if elapsed else 0.0,
                           "mean_batch": getattr(stats, "mean_batch_size", None)}
    if errors:
        out["first_error"] = errors[0]
    if latencies:
        out.update(latency_summary(latencies))
    return out


def server(engine: Any, inputs: Sequence[Any], *, p99_bound_ms: float, budget_s: float = 10.0,
           start_rate: float, max_batch_size: int = 32, max_delay_ms: float = 2.0, min_queries: int = 200,
           refine: int = 3, on_step: StepCallback | None = None) -> dict[str, Any]:
    """The highest Poisson arrival rate whose p99 latency meets ``p99_bound_ms``: double the rate while
    trials pass, then bisect between the last pass and the first failure ``refine`` times."""
    rows = [_one_row(inputs, r) for r in range(inputs[0].shape[0])] if inputs else [()]
    trials: list[dict[str, Any]] = []
    deadline = time.perf_counter() + budget_s
    per_trial = max(0.5, budget_s / 10)

    def trial(rate: float) -> bool:
        duration = min(max(per_trial, min_queries / rate), max(per_trial, deadline - time.perf_counter()))
        r = server_trial(engine, rows, rate, duration_s=duration, max_batch_size=max_batch_size,
                         max_delay_ms=max_delay_ms, seed=len(trials))
        r["passed"] = bool(r["completed"] and not r["rejected"] and not r["errors"] and not r["late"]
                           and r["completed"] >= min(min_queries, r["queries"]) and r["p99_ms"] <= p99_bound_ms)
        trials.append(r)
        if on_step:
            on_step(f"server {rate:.0f}/s {'ok' if r['passed'] else 'over bound'}")
        return r["passed"]

    good, bad = None, None
    rate = max(start_rate, 1e-3)
    while time.perf_counter() < deadline:
        if trial(rate):
            good = rate
            rate *= 2
        else:
            bad = rate
            break
    if good is None and bad is not None:  # even the first rate failed: look lower
        rate = bad / 4
        while time.perf_counter() < deadline and rate > 0.5:
            if trial(rate):
                good = rate
                break
            bad, rate = rate, rate / 4
    for _ in range(refine):
        if good is None or bad is None or time.perf_counter() >= deadline:
            break
        mid = (good + bad) / 2
        if trial(mid):
            good = mid
        else:
            bad = mid
    out = {"p99_bound_ms": p99_bound_ms, "max_rate_per_s": good, "max_batch_size": max_batch_size,
           "max_delay_ms": max_delay_ms, "trials": trials}
    if good is None:
        out["note"] = f"no rate tried met p99 <= {p99_bound_ms:.3g} ms"
    elif bad is None:
        out["note"] = "the time budget ran out before any rate failed: the highest rate is at least this"
    return out
