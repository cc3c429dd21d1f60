"""Measuring engines, after MLPerf LoadGen's scenarios.

- **single-stream**: one query at a time, back to back; latency p50/p90/p99 per batch size. Calls run in
  rounds after a warm-up, until the round medians agree within ``stability_tol`` (the figures are
  ``stable``) or the time budget is spent (they are not, and the result says so).
- **offline**: every query available at once; throughput (samples per second) per batch size, from
  ``offline_workers`` threads issuing batches back to back.
- **server**: queries of one sample arriving at Poisson times at a target rate, through a
  :class:`motorpool.DynamicBatcher`; latency is counted from each query's scheduled arrival. Reports the
  highest rate whose p99 latency stays within ``p99_bound_ms`` with no query rejected or failed.

:func:`benchmark` measures one engine; :func:`bench_model` compiles a model for backends x precisions and
measures each, with compile time, load time, first-call time, peak resident memory and artifact size.
Timings on a shared machine are noisy: compare figures measured side by side in one run.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .errors import BackendUnavailable, MotorpoolError, UnsupportedError

SCENARIOS = ("single_stream", "offline", "server")
#: called after each finished step with a short description (progress bars)
StepCallback = Callable[[str], None]


# -- results -----------------------------------------------------------------------------------------------


@dataclass
class BatchFigures:
    """What one batch size measured. Latencies in milliseconds, throughput in samples per second."""

    batch: int
    single_stream: dict[str, Any] | None = None
    offline: dict[str, Any] | None = None
    note: str = ""


@dataclass
class BenchResult:
    """One engine's figures (a row group of the bench table)."""

    backend: str
    device: str
    precision: str
    batches: list[BatchFigures] = field(default_factory=list)
    server: dict[str, Any] | None = None
    compile_time_s: float | None = None
    load_time_s: float | None = None
    first_call_s: float | None = None
    peak_rss_mb: float | None = None
    artifact_bytes: int | None = None
    status: str = "ok"  # "ok", "failed", "unavailable"
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"

    def figures(self, batch: int) -> BatchFigures | None:
        return next((b for b in self.batches if b.batch == batch), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchSuite:
    """Every engine measured by one ``bench`` run, with what was asked and where it ran."""

    model: str
    results: list[BenchResult]
    config: dict[str, Any]
    machine: dict[str, Any]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "created": self.created, "config": self.config, "machine": self.machine,
                "results": [r.to_dict() for r in self.results]}


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


def server_trial(engine: Any, rows: Sequence[Sequence[Any]], rate: float, *, duration_s: float,
                 max_batch_size: int, max_delay_ms: float, seed: int = 0, max_queue: int = 100_000
                 ) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` per second for ``duration_s`` through a fresh DynamicBatcher."""
    from .batcher import DynamicBatcher, QueueFull

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
        for i, due in enumerate(arrivals):
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
                           "errors": len(errors), "seconds": elapsed,
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
        r["passed"] = bool(r["completed"] and not r["rejected"] and not r["errors"]
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


def benchmark(engine: Any, inputs: Sequence[Any] | None = None, *, batch_sizes: Sequence[int] | None = None,
              scenarios: Sequence[str] = ("single_stream", "offline"), time_budget_s: float = 2.0,
              warmup: int = 3, min_calls: int = 20, stability_tol: float = 0.05, offline_workers: int = 1,
              p99_bound_ms: float | None = None, server_budget_s: float | None = None,
              server_max_batch: int | None = None, server_delay_ms: float = 2.0,
              on_step: StepCallback | None = None) -> BenchResult:
    """Measure ``engine`` in LoadGen's scenarios; see the module docstring.

    ``inputs``: what the engine is called with (their rows are reused for every batch size); fresh random
    inputs of its spec when omitted. ``batch_sizes`` defaults to the inputs' batch. ``time_budget_s`` is the
    budget of each scenario at each batch size. ``p99_bound_ms`` for the server scenario defaults to ten
    times the single-stream p50 at batch 1 (at least 10 ms).
    """
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenario(s) {sorted(unknown)}; choose from: {', '.join(SCENARIOS)}")
    spec = engine.input_spec
    if inputs is not None:
        inputs = tuple(inputs)
        spec.check(inputs)
    if not batch_sizes:
        batch_sizes = [inputs[0].shape[0] if inputs else spec.example_sizes.get("batch", 1)]
    if any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes: expected positive ints, got {list(batch_sizes)}")
    result = BenchResult(engine.backend, engine.device, engine.precision,
                         compile_time_s=engine.report.compile_time_s, load_time_s=engine.report.load_time_s)
    with PeakRSS() as rss:
        for b in batch_sizes:
            fig = BatchFigures(b)
            result.batches.append(fig)
            try:
                x = inputs_at_batch(spec, b, inputs)
            except UnsupportedError as exc:
                fig.note = str(exc)
                continue
            if "single_stream" in scenarios:
                fig.single_stream = single_stream(engine, x, budget_s=time_budget_s, warmup=warmup,
                                                  min_calls=min_calls, stability_tol=stability_tol)
                if on_step:
                    on_step(f"single-stream batch {b}")
            if "offline" in scenarios:
                fig.offline = offline(engine, x, budget_s=time_budget_s, workers=offline_workers)
                if on_step:
                    on_step(f"offline batch {b}")
        if "server" in scenarios:
            result.server = _server_scenario(engine, spec, inputs, result, p99_bound_ms=p99_bound_ms,
                                             budget_s=server_budget_s or 5 * time_budget_s,
                                             max_batch=server_max_batch or max(batch_sizes),
                                             delay_ms=server_delay_ms, on_step=on_step)
    result.peak_rss_mb = rss.peak_mb
    return result


def batcher_available() -> str | None:
    """None when the dynamic batcher can be used, else why not."""
    try:
        from .batcher import DynamicBatcher  # noqa: F401
    except ImportError as exc:
        return f"the dynamic batcher (motorpool.batcher) is not available: {exc}"
    return None


def _server_scenario(engine, spec, inputs, result: BenchResult, *, p99_bound_ms, budget_s, max_batch, delay_ms,
                     on_step) -> dict[str, Any]:
    why = batcher_available()
    if why:
        return {"skipped": why}
    one = inputs_at_batch(spec, 1, inputs)
    base = result.figures(1)
    stream = base.single_stream if base and base.single_stream else single_stream(engine, one, budget_s=0.5)
    # the median, not the tail: a default bound derived from a noisy p99 would excuse that very noise
    bound = p99_bound_ms if p99_bound_ms is not None else max(10.0, 10 * stream["p50_ms"])
    rows = max(64, max_batch)
    pool = inputs_at_batch(spec, rows, inputs, seed=1)
    start = 0.5 * 1e3 / max(stream["p50_ms"], 1e-3)  # half of what one-at-a-time calls could sustain
    out = server(engine, pool, p99_bound_ms=bound, budget_s=budget_s, start_rate=start, max_batch_size=max_batch,
                 max_delay_ms=delay_ms, on_step=on_step)
    out["bound_source"] = "given" if p99_bound_ms is not None else "10 x single-stream p50 at batch 1 (min 10 ms)"
    return out


# -- many engines -------------------------------------------------------------------------------------------------


def artifact_size(engine: Any) -> tuple[int | None, float | None, Any, str]:
    """Save ``engine`` to a temporary directory: (bytes, load seconds, loaded engine, note)."""
    from .compile import load

    tmp = Path(tempfile.mkdtemp(prefix="motorpool-bench-"))
    try:
        try:
            engine.save(tmp / "engine")
        except UnsupportedError as exc:
            return None, None, None, f"not serializable: {exc}"
        size = sum(p.stat().st_size for p in (tmp / "engine").rglob("*") if p.is_file())
        t0 = time.perf_counter()
        loaded = load(tmp / "engine")
        return size, time.perf_counter() - t0, loaded, ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_model(model: torch.nn.Module, example_inputs: Any, *, backends: Sequence[str],
                precisions: Sequence[str] = ("fp32",), batch_sizes: Sequence[int] = (1, 8, 32),
                scenarios: Sequence[str] = ("single_stream", "offline"), time_budget_s: float = 1.0,
                measure_load: bool = True, verify: bool = True, calibration: Iterable[Any] | None = None,
                compile_options: dict[str, Any] | None = None, model_name: str = "model",
                on_step: StepCallback | None = None, on_result: Callable[[BenchResult], None] | None = None,
                **bench_kwargs: Any) -> BenchSuite:
    """Compile ``model`` for every backend x precision and :func:`benchmark` each engine.

    Compiles bypass the artifact cache, so ``compile_time_s`` is a real compile. With ``measure_load`` each
    engine is saved to a temporary directory and loaded back: ``artifact_bytes``, ``load_time_s`` and the
    loaded engine's ``first_call_s`` (a cold start). A backend that is unavailable or fails is a row saying
    why, never an exception.
    """
    from . import __version__, hardware
    from .compile import compile as mp_compile
    from .spec import as_example_tuple

    examples = as_example_tuple(example_inputs)
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results = []
    for backend in backends:
        for precision in precisions:
            row = BenchResult(backend, "-", precision)
            try:
                with PeakRSS() as rss:
                    engine = mp_compile(model, examples, backend=backend, precision=precision, verify=verify,
                                        calibration=calibration, options=compile_options, cache=False)
                    if on_step:
                        on_step(f"{backend} {precision}: compiled")
                    size = load_s = loaded = None
                    note = ""
                    if measure_load:
                        size, load_s, loaded, note = artifact_size(engine)
                    cold = loaded or engine
                    x = inputs_at_batch(cold.input_spec, batch_sizes[0], examples)
                    t0 = time.perf_counter()
                    cold(*x)
                    first_call = time.perf_counter() - t0
                    del loaded, cold
                    if on_step:
                        on_step(f"{backend} {precision}: saved and loaded")
                    row = benchmark(engine, examples, batch_sizes=batch_sizes, scenarios=scenarios,
                                    time_budget_s=time_budget_s, on_step=on_step, **bench_kwargs)
                row.peak_rss_mb = rss.peak_mb
                row.artifact_bytes, row.load_time_s, row.first_call_s = size, load_s, first_call
                if note:
                    row.notes.append(note)
                if engine.report.verification:
                    v = engine.report.verification
                    row.notes.append(f"verified: max abs err {v.get('max_abs_err', float('nan')):.2g}")
            except BackendUnavailable as exc:
                row.status, row.reason = "unavailable", str(exc)
            except (MotorpoolError, Exception) as exc:  # noqa: BLE001 - one backend's failure is one row
                row.status = "failed"
                row.reason = str(exc) if isinstance(exc, MotorpoolError) else f"{type(exc).__name__}: {exc}"
            results.append(row)
            if on_result:
                on_result(row)
    hw = hardware.detect()
    machine = {"summary": hardware.summary(), "cpu": hw.cpu.model, "fingerprint": hardware.fingerprint(),
               "cores": hw.cpu.cores,
               "torch": torch.__version__, "motorpool": __version__, "threads": torch.get_num_threads(),
               "load_average": load_at_start}
    config = {"backends": list(backends), "precisions": list(precisions), "batch_sizes": list(batch_sizes),
              "scenarios": list(scenarios), "time_budget_s": time_budget_s, "measure_load": measure_load,
              **{k: v for k, v in bench_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}}
    return BenchSuite(model_name, results, config, machine)


def steps_per_engine(batch_sizes: Sequence[int], scenarios: Sequence[str]) -> int:
    """About how many ``on_step`` calls :func:`bench_model` makes for one engine (for progress bars); the
    server scenario's trial count depends on where the rate search ends, so it is an estimate."""
    per_batch = sum(s in scenarios for s in ("single_stream", "offline"))
    return 2 + per_batch * len(batch_sizes) + (6 if "server" in scenarios else 0)
