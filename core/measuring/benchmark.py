"""Benchmarking engines: :func:`benchmark` measures one engine in the scenarios, run by MLPerf LoadGen or by
the built-in code of :mod:`.scenarios` (``driver``, see :mod:`.drivers`);
:func:`bench_model` compiles a model for backends x precisions and measures each, with compile time, load
time, first-call time, peak resident memory and artifact size. Timings on a shared machine are noisy:
compare figures measured side by side in one run."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from .._version import __version__
from ..engine.saved import open_saved
from ..pipeline.candidate import reason
from ..pipeline.threads import thread_options
from ..plugin import hardware
from ..plugin.errors import BackendUnavailable, UnsupportedError
from ..plugin.spec import as_example_tuple
from ..selection.dispatch import compile_model
from .cost import annotate, check_price
from .drivers import loadgen_batch, loadgen_server, resolve_driver
from .loadgen import BUILTIN_NAMES, scenario_names
from .scenarios import (PeakRSS, StepCallback, inputs_at_batch, offline, served_single_stream, server,
                        single_stream)

SCENARIOS = ("single_stream", "offline", "server")


def bench_scenarios(names: Sequence[str]) -> list[str]:
    """The scenarios' keys in the figures (:data:`SCENARIOS`) for ``names`` in either spelling
    (``single_stream`` or LoadGen's ``SingleStream``); an unknown one is a ValueError naming the valid ones."""
    key = {v: k for k, v in BUILTIN_NAMES.items()}
    return [key[s] for s in scenario_names(names)]


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
    driver: str = "builtin"  # who ran the scenarios: "loadgen" or "builtin"

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"

    def figures(self, batch: int) -> BatchFigures | None:
        return next((b for b in self.batches if b.batch == batch), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text_rows(self) -> list[list[str]]:
        """This engine's rows of the plain-text table (:data:`TEXT_HEADERS`)."""
        if self.status != "ok":
            return [[self.backend, self.precision, "-", self.status, " ".join(self.reason.split())[:60]]]
        rate = (self.server or {}).get("max_rate_per_s")
        out = []
        for i, b in enumerate(self.batches):
            ss, off = b.single_stream or {}, b.offline or {}
            mark = "" if ss.get("stable", True) else "~"
            out.append([self.backend if i == 0 else "", self.precision if i == 0 else "", str(b.batch),
                        f"{mark}{ss['p50_ms']:.3f}" if ss else "-", f"{mark}{ss['p99_ms']:.3f}" if ss else "-",
                        f"{off['throughput_per_s']:.0f}" if off else "-",
                        f"{rate:.0f}" if rate is not None and i == 0 else ("-" if i == 0 else ""),
                        f"{self.compile_time_s:.2f}" if self.compile_time_s is not None and i == 0 else ""])
        return out

    def __str__(self) -> str:
        return _text_table([self], f"{self.label} on {self.device}")


#: the plain-text table of ``print(result)``/``print(suite)``; ``motorpool bench`` draws a richer one
TEXT_HEADERS = ("backend", "prec", "batch", "p50 ms", "p99 ms", "offline/s", "server/s", "compile s")


def _text_table(results: Sequence[BenchResult], title: str) -> str:
    body = [row for r in results for row in r.text_rows()]
    widths = [max([len(h)] + [len(row[i]) for row in body if i < len(row) and len(row) == len(TEXT_HEADERS)])
              for i, h in enumerate(TEXT_HEADERS)]
    left = {0, 1}

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(TEXT_HEADERS):  # a failed engine: its status and reason after the batch column
            return "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells[:3])) + "  " + "  ".join(cells[3:])
        return "  ".join(c.ljust(widths[i]) if i in left else c.rjust(widths[i]) for i, c in enumerate(cells))

    lines = [title, line(TEXT_HEADERS)] + [line(row) for row in body]
    if any(not (b.single_stream or {}).get("stable", True) for r in results for b in r.batches):
        lines.append("~: did not settle within the time budget (a rough figure, not a result)")
    return "\n".join(lines)


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

    def __str__(self) -> str:
        return _text_table(self.results, f"motorpool bench: {self.model} ({self.machine.get('summary', '')})")




def benchmark(engine: Any, inputs: Sequence[Any] | None = None, *, batch_sizes: Sequence[int] | None = None,
              scenarios: Sequence[str] = ("single_stream", "offline"), time_budget_s: float = 2.0,
              warmup: int = 3, min_calls: int = 20, stability_tol: float = 0.05, offline_workers: int = 1,
              p99_bound_ms: float | None = None, server_budget_s: float | None = None,
              server_max_batch: int | None = None, server_delay_ms: float = 2.0, driver: str = "builtin",
              loadgen_logs: str | Path | None = None, on_step: StepCallback | None = None) -> BenchResult:
    """Measure ``engine`` in LoadGen's scenarios; see the module docstring.

    ``inputs``: what the engine is called with (their rows are reused for every batch size); fresh random
    inputs of its spec when omitted. ``batch_sizes`` defaults to the inputs' batch. ``time_budget_s`` is the
    budget of each scenario at each batch size. ``p99_bound_ms`` for the server scenario defaults to ten
    times the single-stream p50 at batch 1 (at least 10 ms; under LoadGen, its own default from the
    measurement). ``driver``: "builtin", "loadgen" or "auto" (LoadGen where installed, see :mod:`.drivers`);
    ``loadgen_logs`` keeps LoadGen's log files there (default: temporary folders, removed).
    ``warmup``, ``min_calls``, ``stability_tol``, ``offline_workers`` and ``server_budget_s`` (the rate
    search) are the built-in scenarios'.
    """
    scenarios = bench_scenarios(scenarios)
    spec = engine.input_spec
    if inputs is not None:
        inputs = tuple(inputs)
        spec.check(inputs)
    if not batch_sizes:
        batch_sizes = [inputs[0].shape[0] if inputs else spec.example_sizes.get("batch", 1)]
    if any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes: expected positive ints, got {list(batch_sizes)}")
    use_loadgen = resolve_driver(driver).name == "loadgen"
    result = BenchResult(engine.backend, engine.device, engine.precision, driver="loadgen" if use_loadgen else "builtin",
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
            if use_loadgen:
                figures = loadgen_batch(engine, inputs, b, scenarios, budget_s=time_budget_s, log_root=loadgen_logs)
                fig.single_stream, fig.offline = figures.get("single_stream"), figures.get("offline")
            else:
                if "single_stream" in scenarios:
                    fig.single_stream = single_stream(engine, x, budget_s=time_budget_s, warmup=warmup,
                                                      min_calls=min_calls, stability_tol=stability_tol)
                if "offline" in scenarios:
                    fig.offline = offline(engine, x, budget_s=time_budget_s, workers=offline_workers)
            if on_step:
                for name in [s for s in ("single_stream", "offline") if s in scenarios]:
                    on_step(f"{name.replace('_', '-')} batch {b}")
        if "server" in scenarios:
            max_batch = server_max_batch or max(batch_sizes)
            if use_loadgen:
                result.server = loadgen_server(engine, inputs, budget_s=time_budget_s, max_batch=max_batch,
                                               delay_ms=server_delay_ms, p99_bound_ms=p99_bound_ms,
                                               log_root=loadgen_logs)
                if on_step:
                    on_step(f"server (LoadGen) {result.server['verdict']}")
            else:
                result.server = _server_scenario(engine, spec, inputs, result, p99_bound_ms=p99_bound_ms,
                                                 budget_s=server_budget_s or 5 * time_budget_s, max_batch=max_batch,
                                                 delay_ms=server_delay_ms, on_step=on_step)
    result.peak_rss_mb = rss.peak_mb
    return result


def _server_scenario(engine, spec, inputs, result: BenchResult, *, p99_bound_ms, budget_s, max_batch, delay_ms,
                     on_step, server_load: float = 0.5) -> dict[str, Any]:
    one = inputs_at_batch(spec, 1, inputs)
    base = result.figures(1)
    stream = base.single_stream if base and base.single_stream else single_stream(engine, one, budget_s=0.5)
    # the median, not the tail: a default bound derived from a noisy p99 would excuse that very noise
    bound = p99_bound_ms if p99_bound_ms is not None else max(10.0, 10 * stream["p50_ms"])
    rows = max(64, max_batch)
    pool = inputs_at_batch(spec, rows, inputs, seed=1)
    served = served_single_stream(engine, one, budget_s=min(0.3, budget_s / 10))
    start = server_load * served["throughput_per_s"]
    out = server(engine, pool, p99_bound_ms=bound, budget_s=budget_s, start_rate=start, max_batch_size=max_batch,
                 max_delay_ms=delay_ms, on_step=on_step)
    out["bound_source"] = "given" if p99_bound_ms is not None else "10 x single-stream p50 at batch 1 (min 10 ms)"
    out["start_rate_per_s"] = start
    out["start_source"] = f"{server_load:g} x the single-stream rate at batch 1 through the batcher"
    return out


# -- many engines -------------------------------------------------------------------------------------------------


def artifact_size(engine: Any) -> tuple[int | None, float | None, Any, str]:
    """Save ``engine`` to a temporary directory: (bytes, load seconds, loaded engine, note)."""
    tmp = Path(tempfile.mkdtemp(prefix="motorpool-bench-"))
    try:
        try:
            engine.save(tmp / "engine")
        except UnsupportedError as exc:
            return None, None, None, f"not serializable: {exc}"
        size = sum(p.stat().st_size for p in (tmp / "engine").rglob("*") if p.is_file())
        t0 = time.perf_counter()
        loaded = open_saved(tmp / "engine", trust_code=True)  # saved a line above
        return size, time.perf_counter() - t0, loaded, ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_model(model: torch.nn.Module, example_inputs: Any, *, backends: Sequence[str],
                precisions: Sequence[str] = ("fp32",), batch_sizes: Sequence[int] = (1, 8, 32),
                scenarios: Sequence[str] = ("single_stream", "offline"), time_budget_s: float = 1.0,
                measure_load: bool = True, verify: bool = True, calibration: Iterable[Any] | None = None,
                compile_options: dict[str, Any] | None = None, model_name: str = "model",
                on_step: StepCallback | None = None, on_result: Callable[[BenchResult], None] | None = None,
                device: str = "auto", threads: int | None = None, price_per_hour: float | None = None,
                driver: str = "builtin", **bench_kwargs: Any) -> BenchSuite:
    """Compile ``model`` for every backend x precision and :func:`benchmark` each engine.

    Compiles bypass the artifact cache, so ``compile_time_s`` is a real compile. With ``measure_load`` each
    engine is saved to a temporary directory and loaded back: ``artifact_bytes``, ``load_time_s`` and the
    loaded engine's ``first_call_s`` (a cold start). A backend that is unavailable or fails is a row saying
    why, never an exception. ``device`` is where every engine is compiled for; ``threads`` runs each on that
    many threads (torch's intra-op pool, and each backend's declared thread option: ONNX Runtime's
    ``intra_op_num_threads``, OpenVINO's ``num_threads``). ``price_per_hour`` (USD, this machine) adds the
    cost per 1000 inferences to every offline and server figure (see :mod:`motorpool.measuring.cost`).
    ``driver`` ("builtin", "loadgen" or "auto") is resolved once; the suite's ``config["driver"]`` says which
    ran ("mlperf_loadgen X.Y", or the built-in and why).
    """
    # the scenario names, the driver and the price are checked before the minutes of measuring, not after
    scenarios = bench_scenarios(scenarios)
    chosen = resolve_driver(driver)
    if price_per_hour is not None:
        check_price(price_per_hour)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected a positive integer, got {threads!r}")
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        suite = _bench_all(model, example_inputs, backends=backends, precisions=precisions,
                           batch_sizes=batch_sizes, scenarios=scenarios, time_budget_s=time_budget_s,
                           measure_load=measure_load, verify=verify, calibration=calibration,
                           compile_options=compile_options, model_name=model_name, on_step=on_step,
                           on_result=on_result, device=device, threads=threads, driver=chosen.name,
                           **bench_kwargs)
    finally:
        torch.set_num_threads(saved_threads)
    suite.config["driver"] = chosen.description
    return annotate(suite, price_per_hour) if price_per_hour is not None else suite


def _bench_all(model, example_inputs, *, backends, precisions, batch_sizes, scenarios, time_budget_s, measure_load,
               verify, calibration, compile_options, model_name, on_step, on_result, device, threads,
               **bench_kwargs) -> BenchSuite:
    examples = as_example_tuple(example_inputs)
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results = []
    for backend in backends:
        for precision in precisions:
            row = _bench_one(model, examples, backend, precision, batch_sizes=batch_sizes, scenarios=scenarios,
                             time_budget_s=time_budget_s, measure_load=measure_load, verify=verify,
                             calibration=calibration, compile_options=compile_options, on_step=on_step,
                             device=device,
                             compile_options_for=lambda b: {**thread_options(b, threads), **(compile_options or {})},
                             **bench_kwargs)
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
              "device": device, "threads": threads, "input_shapes": [list(x.shape) for x in examples],
              **{k: v for k, v in bench_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}}
    return BenchSuite(model_name, results, config, machine)


def _bench_one(model, examples, backend: str, precision: str, *, batch_sizes, scenarios, time_budget_s,
               measure_load, verify, calibration, compile_options, on_step, device="auto",
               compile_options_for=None, **bench_kwargs) -> BenchResult:
    """One backend x precision: compile, save and load back (cold start), benchmark. A failure is the row."""
    row = BenchResult(backend, "-", precision)
    try:
        with PeakRSS() as rss:
            engine = compile_model(model, examples, backend=backend, device=device, precision=precision,
                                   verify=verify,
                                   calibration=calibration, cache=False,
                                   options=compile_options_for(backend) if compile_options_for else compile_options)
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
    except Exception as exc:  # noqa: BLE001 - one backend's failure is one row
        row.status, row.reason = "failed", reason(exc)
    return row


def steps_per_engine(batch_sizes: Sequence[int], scenarios: Sequence[str]) -> int:
    """About how many ``on_step`` calls :func:`bench_model` makes for one engine (for progress bars); the
    server scenario's trial count depends on where the rate search ends, so it is an estimate."""
    per_batch = sum(s in scenarios for s in ("single_stream", "offline"))
    return 2 + per_batch * len(batch_sizes) + (6 if "server" in scenarios else 0)
