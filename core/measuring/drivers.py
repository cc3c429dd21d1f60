"""Who runs ``motorpool bench``'s scenarios: MLPerf LoadGen where it is installed, the built-in scenarios of
:mod:`.scenarios` where it is not, and the LoadGen runs that fill a bench row.

Under LoadGen (:mod:`.loadgen`, the same code ``motorpool loadgen`` runs), at each batch size b a QSL
sample is one b-row input: SingleStream's latencies are per call of b rows, as the built-in single-stream
figures are, and Offline's throughput is b x LoadGen's samples per second (rows per second). Server runs
once per engine on one-row samples through a :class:`motorpool.DynamicBatcher`. Each run's settings come
from a short measurement of that engine first (recorded as ``measured`` beside the figures), each lasts
about the time budget (LoadGen's ``min_duration``; its ``max_duration`` is the safety stop), and each
figure carries LoadGen's verdict and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .loadgen import FIX, ScenarioResult, calibrate, loadgen_version, run_scenario
from .scenarios import inputs_at_batch

DRIVERS = ("auto", "loadgen", "builtin")
#: distinct b-row samples in the QSL at each batch size (memory grows with b x this)
BATCH_SAMPLES = 8
#: one-row samples in the Server scenario's QSL
SERVER_SAMPLES = 64


@dataclass(frozen=True)
class Driver:
    """``name`` is "loadgen" or "builtin"; ``description`` says which ran and, for the built-in, why."""

    name: str
    description: str


def resolve_driver(choice: str = "auto") -> Driver:
    """``auto``: LoadGen when ``import mlperf_loadgen`` works, else the built-in scenarios (saying why);
    ``loadgen``: LoadGen or an ImportError naming the fix; ``builtin``: the built-in scenarios."""
    if choice not in DRIVERS:
        raise ValueError(f"driver: expected one of {', '.join(DRIVERS)}, got {choice!r}")
    if choice == "builtin":
        return Driver("builtin", "built-in (asked for)")
    try:
        version = loadgen_version()
    except ImportError:
        if choice == "loadgen":
            raise
        return Driver("builtin", f"built-in: mlperf_loadgen not installed ({FIX})")
    return Driver("loadgen", f"mlperf_loadgen {version}")


def _verdict(result: ScenarioResult, measured: dict[str, Any]) -> dict[str, Any]:
    """What every LoadGen figure carries: the verdict and why, what LoadGen was told and what it came from."""
    return {"driver": "loadgen", "verdict": result.verdict, "reason": result.reason, "settings": result.settings,
            "measured": measured, "errors": result.errors, "seconds": result.seconds, "log_dir": result.log_dir}


def _log_dir(root: str | Path | None, engine, name: str) -> Path | None:
    return None if root is None else Path(root) / f"{engine.backend}-{engine.precision}" / name


def loadgen_batch(engine, inputs: Sequence[Any] | None, batch: int, scenarios: Sequence[str], *,
                  budget_s: float, log_root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """``{"single_stream": figures, "offline": figures}`` (those asked for) from LoadGen runs at ``batch``
    rows per sample, each for ``budget_s``, after a short measurement of one b-row call."""
    spec = engine.input_spec
    pool = [inputs_at_batch(spec, batch, inputs, seed=i) for i in range(BATCH_SAMPLES)]
    cal = calibrate(engine, pool, offline_batch=1, seconds=min(0.3, 0.2 * budget_s), served=False)
    ms = max(1, int(budget_s * 1e3))
    out: dict[str, dict[str, Any]] = {}
    if "single_stream" in scenarios:
        r = run_scenario(engine, "SingleStream", samples=pool, calibration=cal, min_duration_ms=ms,
                         log_dir=_log_dir(log_root, engine, f"SingleStream-batch{batch}"))
        lat = {f"{k}_ms": r.latency_ms[k] for k in ("p50", "p90", "p99", "mean", "min", "max") if k in r.latency_ms}
        out["single_stream"] = {**lat, "throughput_per_s": batch * r.samples_per_second,
                                **_verdict(r, cal.to_dict())}
    if "offline" in scenarios:
        r = run_scenario(engine, "Offline", samples=pool, calibration=cal, min_duration_ms=ms,
                         log_dir=_log_dir(log_root, engine, f"Offline-batch{batch}"))
        out["offline"] = {"throughput_per_s": batch * r.samples_per_second, **_verdict(r, cal.to_dict())}
    return out


def loadgen_server(engine, inputs: Sequence[Any] | None, *, budget_s: float, max_batch: int, delay_ms: float,
                   p99_bound_ms: float | None, server_load: float = 0.5,
                   log_root: str | Path | None = None) -> dict[str, Any]:
    """LoadGen's Server at ``server_load`` x the measured one-at-a-time rate through the batcher, for
    ``budget_s``. ``max_rate_per_s`` (the rate that met the bound, as the built-in search reports it) is
    LoadGen's completed samples per second when VALID, None when not."""
    spec = engine.input_spec
    pool = [inputs_at_batch(spec, 1, inputs, seed=i) for i in range(SERVER_SAMPLES)]
    cal = calibrate(engine, pool, offline_batch=1, seconds=min(0.3, 0.2 * budget_s))
    r = run_scenario(engine, "Server", samples=pool, calibration=cal, min_duration_ms=max(1, int(budget_s * 1e3)),
                     server_target_latency_ms=p99_bound_ms, server_load=server_load, server_batch=max_batch,
                     server_delay_ms=delay_ms, log_dir=_log_dir(log_root, engine, "Server"))
    told = r.settings
    return {"target_qps": told["server_target_qps"], "completed_per_s": r.samples_per_second,
            "max_rate_per_s": r.samples_per_second if r.valid else None,
            "p99_bound_ms": told["server_target_latency_ms"], "p99_ms": r.latency_ms.get("p99"),
            "bound_source": "given" if p99_bound_ms is not None else "LoadGen default from the measurement",
            "max_batch_size": max_batch, "max_delay_ms": delay_ms, **_verdict(r, cal.to_dict())}
