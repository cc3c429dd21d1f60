"""MLPerf LoadGen over a motorpool engine: SingleStream, Offline and Server, with LoadGen's own verdict.

Drives the real ``mlcommons-loadgen`` (``import mlperf_loadgen``; ``pip install "motorpool[loadgen]"``):

- a QSL (query sample library) of generated inputs: ``sample_count`` fresh random batch-1 inputs of the
  engine's input spec, all kept in memory (``performance_sample_count`` = ``sample_count``);
- an SUT (system under test) calling the engine: SingleStream runs each query on LoadGen's issue thread
  (one query in flight at a time, as the scenario defines); Offline runs LoadGen's one big query on a
  worker thread in batches of ``offline_batch`` rows; Server feeds each query to a
  :class:`motorpool.DynamicBatcher` and completes it from the batcher's thread when its rows come back;
- settings from a short measurement first (``calibrate``): SingleStream's expected latency is the measured
  p50 of one sample's call, Offline's expected QPS 1.5x (``offline_headroom``) the best measured throughput at
  ``offline_batch``, Server's target QPS a fraction (``server_load``, 0.5) of the single-stream rate at
  batch 1 through the same dynamic batcher the Server SUT uses (a tiny model's engine call is far faster
  than one query's trip through Python, so the engine's own rate would overrun the run), and its target
  latency a multiple of the batch-1 latency (never under 10 ms). Each can be given instead;
- a bounded run: ``min_duration_ms`` (1 s by default, MLPerf's own is 600 s); ``min_query_count`` by default
  what the measured rate fits in that duration (at most 64), and ``max_duration_ms`` (3x min + 2 s) as the
  safety stop, so each scenario lasts about ``min_duration_ms``; its wall time is recorded.

A sample is one input of the QSL: batch-1 rows here, or whole batches when the caller's samples are batches
(``motorpool bench`` at batch size b). LoadGen's logs go to ``log_dir``, or to a temporary folder removed
once its summary is read.

The figures come from LoadGen's summary (``mlperf_log_summary.txt``), parsed into :class:`ScenarioResult`:
the verdict (``VALID``/``INVALID``) and why, samples per second, and the latency percentiles.
The engine is called exactly as a user calls it (``engine(*inputs)``), so its own checks and locks count.
"""

from __future__ import annotations

import math
import re
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from motorpool.plugin import MotorpoolError
from motorpool.serving.dynamic_batcher import DynamicBatcher

SCENARIOS = ("SingleStream", "Offline", "Server")
#: LoadGen's scenario names by the built-in scenarios' names (``motorpool bench`` takes either)
BUILTIN_NAMES = {"single_stream": "SingleStream", "offline": "Offline", "server": "Server"}
EXTRA = "loadgen"
FIX = f'pip install "motorpool[{EXTRA}]"'
SUMMARY = "mlperf_log_summary.txt"
#: the most queries a scenario asks for by default (fewer when the measured rate fits fewer in min_duration)
MAX_DEFAULT_QUERIES = 64


def loadgen_module():
    """``mlperf_loadgen``, or an ImportError that says how to install it."""
    try:
        import mlperf_loadgen
    except ImportError as exc:
        raise ImportError(f"MLPerf LoadGen is not installed ({exc}); {FIX}") from exc
    return mlperf_loadgen


def loadgen_version() -> str:
    """The installed ``mlcommons-loadgen`` version ("?" when its metadata is missing); LoadGen must import."""
    from importlib.metadata import PackageNotFoundError, version

    loadgen_module()
    try:
        return version("mlcommons-loadgen")
    except PackageNotFoundError:
        return "?"


def scenario_names(names: Sequence[str]) -> list[str]:
    """LoadGen's names for ``names``, which may be LoadGen's (``SingleStream``) or the built-in scenarios'
    (``single_stream``), in any case; an unknown one is a ValueError naming the valid ones."""
    by_lower = {s.lower(): s for s in SCENARIOS} | BUILTIN_NAMES
    unknown = [n for n in names if n.lower() not in by_lower]
    if unknown:
        raise ValueError(f"scenarios: expected some of {', '.join(SCENARIOS)} (or {', '.join(BUILTIN_NAMES)}), "
                         f"got {', '.join(map(repr, unknown))}")
    return [by_lower[n.lower()] for n in names]


@dataclass(frozen=True)
class Calibration:
    """What a short measurement found before LoadGen runs: the source of its settings."""

    latency_p50_ms: float        # one sample's call
    offline_batch: int
    batch_latency_ms: float      # one call at offline_batch samples
    throughput: float            # samples/s at offline_batch samples, from the best call
    served_per_s: float | None = None  # one sample at a time through a DynamicBatcher (Server's path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScenarioResult:
    """One LoadGen run, from its summary: ``verdict`` is LoadGen's own ``Result is`` line."""

    scenario: str
    verdict: str                                   # "VALID" or "INVALID"
    samples_per_second: float
    latency_ms: dict[str, float]                   # "min", "mean", "p50", "p90", "p95", "p97", "p99", "p99.9", "max"
    checks: dict[str, bool]                        # "Min duration satisfied", "Min queries satisfied", ...
    settings: dict[str, Any]                       # what LoadGen was told
    errors: int = 0                                # queries whose engine call raised
    log_dir: str = ""                              # "" when the logs went to a removed temporary folder
    seconds: float = 0.0                           # wall time of the LoadGen run
    summary: dict[str, str] = field(default_factory=dict)  # every "key : value" line of the summary

    @property
    def valid(self) -> bool:
        return self.verdict == "VALID"

    @property
    def reason(self) -> str:
        """Why LoadGen said INVALID: the constraints it found unmet (and engine errors); "" when VALID."""
        failed = [k.removesuffix("satisfied").strip() for k, ok in self.checks.items() if not ok]
        parts = [f"not satisfied: {', '.join(failed)}"] if failed else []
        if self.errors:
            parts.append(f"{self.errors} queries failed")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}

    def line(self) -> str:
        lat = self.latency_ms
        why = f" ({self.reason})" if self.reason else ""
        return (f"{self.scenario:<12} {self.verdict:<7} {self.samples_per_second:10.1f} samples/s   "
                f"p50 {lat.get('p50', float('nan')):8.3f} ms   p90 {lat.get('p90', float('nan')):8.3f} ms   "
                f"p99 {lat.get('p99', float('nan')):8.3f} ms{why}")


def parse_summary(text: str) -> dict[str, str]:
    """Every ``key : value`` line of an ``mlperf_log_summary.txt`` (keys stripped, first one wins)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and value.strip():
            out.setdefault(key.strip(), value.strip())
    return out


_PERCENTILE = re.compile(r"^(\d+(?:\.\d+)?) percentile latency \(ns\)$")


def figures_from_summary(scenario: str, summary: dict[str, str]) -> tuple[str, float, dict[str, float],
                                                                           dict[str, bool]]:
    """(verdict, samples per second, latency percentiles in ms, validity checks) from a parsed summary."""
    verdict = summary.get("Result is", "")
    if verdict not in ("VALID", "INVALID"):
        raise MotorpoolError(f"LoadGen's summary has no 'Result is : VALID|INVALID' line "
                                       f"(got {verdict!r})")
    # Each scenario's headline throughput, then the generic one
    keys = {"Offline": ("Samples per second",),
            "Server": ("Completed samples per second", "Scheduled samples per second"),
            "SingleStream": ("QPS w/o loadgen overhead", "QPS w/ loadgen overhead")}[scenario]
    sps = next((float(summary[k]) for k in keys + ("QPS w/o loadgen overhead",) if k in summary), math.nan)
    latency: dict[str, float] = {}
    for key, value in summary.items():
        m = _PERCENTILE.match(key)
        name = None
        if m:
            p = float(m.group(1))
            name = "p" + (f"{p:g}")
        elif key in ("Min latency (ns)", "Max latency (ns)", "Mean latency (ns)"):
            name = key.split()[0].lower()
        if name is not None and name not in latency:
            try:
                latency[name] = float(value) / 1e6
            except ValueError:
                pass
    checks = {k: v.split()[0].lower() == "yes" for k, v in summary.items() if k.endswith("satisfied")}
    return verdict, sps, latency, checks


def calibrate(engine, samples: Sequence[tuple], *, offline_batch: int = 32, seconds: float = 0.3,
              served: bool = True) -> Calibration:
    """A short measurement: one sample's call (p50 over ``seconds``), throughput at ``offline_batch`` samples
    per call and, with ``served``, the one-at-a-time rate through a DynamicBatcher (Server's target QPS)."""
    from .scenarios import served_single_stream

    offline_batch = offline_batch if _dynamic_batch(engine) else 1
    with torch.inference_mode():
        for _ in range(3):  # warm: the first calls at a new batch size build its kernels
            engine(*samples[0])
        times = _timed_calls(engine, [samples[i % len(samples)] for i in range(16)], seconds, at_least=5)
        btimes = times
        if offline_batch > 1:
            batch = _concat([samples[j % len(samples)] for j in range(offline_batch)])
            for _ in range(3):  # the first calls at a new batch size build its kernels
                engine(*batch)
            btimes = _timed_calls(engine, [batch], seconds, at_least=3)
    rate = served_single_stream(engine, samples[0], budget_s=seconds)["throughput_per_s"] if served else None
    # Offline's sample count is expected QPS x duration: the best batch time, so a noisy machine errs on
    # a longer run (still VALID), not on one that ends before min_duration (INVALID)
    return Calibration(latency_p50_ms=statistics.median(times) * 1e3, offline_batch=offline_batch,
                       batch_latency_ms=statistics.median(btimes) * 1e3, throughput=offline_batch / min(btimes),
                       served_per_s=rate)


def _timed_calls(engine, inputs: Sequence[tuple], seconds: float, *, at_least: int) -> list[float]:
    """Seconds per call of ``engine`` on ``inputs`` in turn, for ``seconds`` and at least ``at_least`` calls."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < at_least:
        x = inputs[len(times) % len(inputs)]
        t0 = time.perf_counter()
        engine(*x)
        times.append(time.perf_counter() - t0)
    return times


def _dynamic_batch(engine) -> bool:
    return any(isinstance(t.shape[0], str) for t in engine.input_spec.inputs if t.shape)


def _concat(rows: Sequence[tuple]) -> tuple:
    return tuple(torch.cat([r[i] for r in rows]) for i in range(len(rows[0])))


def generate_samples(engine, count: int, *, seed: int = 0) -> list[tuple]:
    """``count`` fresh random batch-1 inputs of the engine's spec (the QSL's samples)."""
    g = torch.Generator().manual_seed(seed)
    spec = engine.input_spec
    sizes = {"batch": 1} if "batch" in spec.dynamic_dims else None
    return [tuple(spec.random_inputs(generator=g, sizes=sizes)) for _ in range(count)]


class _SUT:
    """The system under test: how one scenario's queries reach the engine and complete back to LoadGen."""

    def __init__(self, lg, engine, samples: Sequence[tuple], scenario: str, *, offline_batch: int,
                 server_batch: int, server_delay_ms: float, server_workers: int):
        self.lg = lg
        self.engine = engine
        self.samples = samples
        self.scenario = scenario
        self.offline_batch = offline_batch
        self.errors = 0
        self.first_error: BaseException | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.batcher = None
        if scenario == "Server":
            self.batcher = DynamicBatcher(engine, max_batch_size=server_batch,
                                                    max_delay_ms=server_delay_ms, max_queue=1 << 16,
                                                    workers=server_workers, name="motorpool-loadgen-server")

    def _complete(self, ids: Sequence[int]) -> None:
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(i, 0, 0) for i in ids])

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            if self.first_error is None:
                self.first_error = exc

    def issue(self, queries) -> None:
        if self.scenario == "SingleStream":
            for q in queries:
                self._run_rows([q])
        elif self.scenario == "Offline":
            t = threading.Thread(target=self._offline, args=(list(queries),), daemon=True,
                                 name="motorpool-loadgen-offline")
            self._threads.append(t)
            t.start()
        else:
            for q in queries:
                try:
                    fut = self.batcher.submit(*self.samples[q.index])
                except Exception as exc:  # noqa: BLE001 - a refused query still completes, as an error
                    self._failed(exc)
                    self._complete([q.id])
                    continue
                fut.add_done_callback(lambda f, qid=q.id: self._done(f, qid))

    def _done(self, fut: Future, qid: int) -> None:
        exc = fut.exception()
        if exc is not None:
            self._failed(exc)
        self._complete([qid])

    def _run_rows(self, queries) -> None:
        try:
            inputs = self.samples[queries[0].index] if len(queries) == 1 else _concat(
                [self.samples[q.index] for q in queries])
            with torch.inference_mode():
                self.engine(*inputs)
        except Exception as exc:  # noqa: BLE001 - LoadGen must hear back about every query
            self._failed(exc)
        self._complete([q.id for q in queries])

    def _offline(self, queries) -> None:
        for start in range(0, len(queries), self.offline_batch):
            self._run_rows(queries[start:start + self.offline_batch])

    def flush(self) -> None:
        pass

    def close(self) -> None:
        for t in self._threads:
            t.join()
        if self.batcher is not None:
            self.batcher.close(drain=True)


def _test_settings(lg: Any, scenario: str, calibration: Calibration, *, min_duration_ms: int,
                   min_query_count: int | None, max_duration_ms: int | None, server_target_qps: float | None,
                   server_target_latency_ms: float | None, server_load: float, server_batch: int,
                   server_delay_ms: float, offline_headroom: float) -> tuple[Any, dict[str, Any]]:
    """LoadGen's TestSettings for ``scenario``, and the same figures as a dict (what LoadGen was told)."""
    settings = lg.TestSettings()
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(min_duration_ms)
    # A safety stop only: a run cut by it is INVALID, as it should be
    settings.max_duration_ms = int(max_duration_ms or 3 * min_duration_ms + 2000)
    told: dict[str, Any] = {"min_duration_ms": int(min_duration_ms), "max_duration_ms": settings.max_duration_ms}
    seconds = min_duration_ms / 1e3
    if scenario == "SingleStream":
        settings.single_stream_expected_latency_ns = max(1, int(calibration.latency_p50_ms * 1e6))
        told["single_stream_expected_latency_ms"] = calibration.latency_p50_ms
        count = _query_count(min_query_count, seconds * 1e3 / calibration.latency_p50_ms)
    elif scenario == "Offline":
        # LoadGen issues expected QPS x min_duration samples: headroom so a run on a noisy machine lasts
        # longer (still VALID) rather than ending before min_duration (INVALID)
        expected = calibration.throughput * offline_headroom
        settings.offline_expected_qps = expected
        told["offline_expected_qps"] = expected
        told["offline_batch"] = calibration.offline_batch
        count = 1 if min_query_count is None else min_query_count
    else:
        measured = calibration.served_per_s or 1e3 / calibration.latency_p50_ms
        qps = server_target_qps or server_load * measured
        latency_ms = server_target_latency_ms or max(10.0, 20 * calibration.latency_p50_ms,
                                                     4 * calibration.batch_latency_ms * server_batch
                                                     / max(1, calibration.offline_batch))
        settings.server_target_qps = qps
        settings.server_target_latency_ns = int(latency_ms * 1e6)
        told.update(server_target_qps=qps, server_measured_per_s=measured,
                    server_target_qps_source="given" if server_target_qps else
                    f"{server_load:g} x the measured single-stream rate at batch 1 through the batcher",
                    server_target_latency_ms=latency_ms, server_batch=server_batch, server_delay_ms=server_delay_ms)
        count = _query_count(min_query_count, qps * seconds)
    settings.min_query_count = count
    told["min_query_count"] = count
    return settings, told


def _query_count(given: int | None, fits: float) -> int:
    """``given``, or the queries the measured rate fits in min_duration (1 to MAX_DEFAULT_QUERIES): a slow
    model then still ends near min_duration instead of waiting out a fixed count."""
    return given if given is not None else max(1, min(MAX_DEFAULT_QUERIES, int(fits)))


def _log_settings(lg: Any, outdir: Path) -> Any:
    """LoadGen's LogSettings writing to ``outdir`` (created), never to the current directory."""
    outdir.mkdir(parents=True, exist_ok=True)
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(outdir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    return log_settings


def _start_test(lg: Any, sut_impl: _SUT, sample_count: int, settings: Any, log_settings: Any) -> None:
    """One LoadGen test over ``sut_impl``; the SUT's threads, the QSL and the SUT are released even if it fails."""
    sut = lg.ConstructSUT(sut_impl.issue, sut_impl.flush)
    qsl = lg.ConstructQSL(sample_count, sample_count, lambda ids: None, lambda ids: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
    finally:
        sut_impl.close()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)


def run_scenario(engine, scenario: str, *, samples: Sequence[tuple], calibration: Calibration,
                 min_duration_ms: int = 1000, min_query_count: int | None = None,
                 max_duration_ms: int | None = None, server_target_qps: float | None = None,
                 server_target_latency_ms: float | None = None, server_load: float = 0.5,
                 server_batch: int = 8, server_delay_ms: float = 1.0, server_workers: int = 1,
                 offline_headroom: float = 1.5, log_dir: str | Path | None = None) -> ScenarioResult:
    """One LoadGen run of ``scenario`` (PerformanceOnly) over ``engine``; see the module docstring."""
    (scenario,) = scenario_names([scenario])
    if min_duration_ms < 1:
        raise ValueError(f"min_duration_ms: expected a positive number of milliseconds, got {min_duration_ms!r}")
    lg = loadgen_module()
    settings, told = _test_settings(
        lg, scenario, calibration, min_duration_ms=min_duration_ms, min_query_count=min_query_count,
        max_duration_ms=max_duration_ms, server_target_qps=server_target_qps,
        server_target_latency_ms=server_target_latency_ms, server_load=server_load, server_batch=server_batch,
        server_delay_ms=server_delay_ms, offline_headroom=offline_headroom)
    outdir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix=f"motorpool-loadgen-{scenario}-"))
    try:
        sut_impl = _SUT(lg, engine, samples, scenario, offline_batch=calibration.offline_batch,
                        server_batch=server_batch, server_delay_ms=server_delay_ms, server_workers=server_workers)
        t0 = time.perf_counter()
        _start_test(lg, sut_impl, len(samples), settings, _log_settings(lg, outdir))
        seconds = time.perf_counter() - t0
        path = outdir / SUMMARY
        if not path.is_file():
            raise MotorpoolError(f"LoadGen wrote no {SUMMARY} in {outdir}")
        summary = parse_summary(path.read_text(errors="replace"))
    finally:
        if log_dir is None:
            shutil.rmtree(outdir, ignore_errors=True)
    verdict, sps, latency, checks = figures_from_summary(scenario, summary)
    if sut_impl.first_error is not None:
        told["first_error"] = f"{type(sut_impl.first_error).__name__}: {sut_impl.first_error}"
    return ScenarioResult(scenario=scenario, verdict=verdict, samples_per_second=sps, latency_ms=latency,
                          checks=checks, settings=told, errors=sut_impl.errors,
                          log_dir="" if log_dir is None else str(outdir), seconds=seconds, summary=summary)


def run_loadgen(engine, scenarios: Sequence[str] = SCENARIOS, *, sample_count: int = 256,
                offline_batch: int = 32, min_duration_ms: int = 1000, calibrate_seconds: float = 0.3,
                seed: int = 0, log_dir: str | Path | None = None, **scenario_options: Any) -> dict[str, Any]:
    """Calibrate, then run each of ``scenarios`` under LoadGen. Returns ``{"calibration": Calibration,
    "results": {scenario: ScenarioResult}}``; ``scenario_options`` go to :func:`run_scenario`."""
    scenarios = scenario_names(scenarios)
    loadgen_module()
    samples = generate_samples(engine, sample_count, seed=seed)
    cal = calibrate(engine, samples, offline_batch=offline_batch, seconds=calibrate_seconds,
                    served="Server" in scenarios)
    results = {}
    for scenario in scenarios:
        sub = None if log_dir is None else Path(log_dir) / scenario
        results[scenario] = run_scenario(engine, scenario, samples=samples, calibration=cal,
                                         min_duration_ms=min_duration_ms, log_dir=sub, **scenario_options)
    return {"calibration": cal, "results": results}
