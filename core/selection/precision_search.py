"""``compile(..., precision="auto", gate=...)``: search backend x precision, keep the fastest that meets the gate.

Every cell (backend, precision) is either compiled, verified, gated and timed, or dropped with its reason
(unavailable, unsupported precision, no calibration data, verification or gate failure, each with its
figure). The survivors are timed side by side (interleaved, so load on a shared machine hits them alike) and
the fastest is returned; the engine's report lists every cell with its figures: speed, the gate's metric,
the verification's, and what an int8 cell calibrated on. Reduced precision is only ever chosen on a task
metric's word, so ``precision="auto"`` needs a gate.

Without ``calibration=``, static int8 cells calibrate on a held-out part of the gate's data and the gate
scores only the rest, for every cell (:mod:`motorpool.techniques.held_out`); no sample both calibrates and
judges.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch

from ..engine.engine import Engine
from ..engine.report import Candidate
from ..pipeline.candidate import candidate_status, compile_one, reason
from ..pipeline.prepare import prepare
from ..pipeline.verify import summary
from ..plugin.contract import PRECISIONS, Backend
from ..plugin.errors import CompileError, GateError, VerificationError
from ..plugin.registry import get_registry, safe_availability
from ..techniques.gate import Gate
from ..techniques.held_out import HeldOut, hold_out
from .progress import Progress
from .ranking import rank
from .timing import Objective, measure_interleaved, timing_inputs

#: the precisions searched, fp32 first (it is the baseline every other is gated against)
SEARCH_PRECISIONS = PRECISIONS


def compile_precision_search(model: torch.nn.Module, example_inputs: Any, *, backend: str | Sequence[str] = "fastest",
                             device: str = "auto", gate: Any = None, precisions: Sequence[str] = SEARCH_PRECISIONS,
                             dynamic_batch: bool = True, dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
                             input_names: Sequence[str] | None = None, calibration: Iterable[Any] | None = None,
                             options: Mapping[str, Any] | None = None, candidates: Sequence[str] | None = None,
                             cache: bool | None = None, budget_s: float = 0.3) -> Engine:
    """The fastest engine over ``backend`` x ``precisions`` whose gate passes; every cell is in its report.

    ``backend`` is "fastest"/"auto" (every registered backend, or ``candidates``), a list, or one name.
    ``budget_s`` is the timing budget per round of side-by-side timing, per cell.
    """
    if not isinstance(gate, Gate):
        raise ValueError('precision="auto" needs gate=motorpool.Gate(...): a reduced precision is only chosen '
                         "when a task metric on your data says it is good enough")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"precisions {bad} are not among {', '.join(PRECISIONS)}")
    names = _backend_names(backend, candidates)
    examples, spec, tree = prepare(model, example_inputs, dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims,
                                   input_names=input_names)
    options = dict(options or {})
    held = _held_out(names, precisions, gate, spec, calibration, options)
    gate = held.gate if held is not None else gate  # the samples held out to calibrate never judge
    cells, engines = _compile_cells(names, precisions, model, examples, spec, tree, device=device, gate=gate,
                                    calibration=calibration, held=held, options=options, cache=cache)
    if not engines:
        reasons = {c.backend: c.reason for c in cells}
        raise CompileError("no backend x precision met the gate: " +
                           "; ".join(f"{k}: {v}" for k, v in reasons.items()), reasons=reasons)
    best, batch = _time_cells(cells, engines, spec, budget_s)
    winner = engines[best]
    winner.report.candidates = cells
    winner.report.info["selection"] = {"mode": "precision-search", "objective": "p50", "batch": batch,
                                       "winner": best, "gate": gate.describe(),
                                       "calibration": _calibration_note(calibration, held)}
    return winner


def _backend_names(backend: str | Sequence[str], candidates: Sequence[str] | None) -> list[str]:
    reg = get_registry()
    if isinstance(backend, str) and backend in ("auto", "fastest"):
        names = list(candidates) if candidates else rank("fp32").names
    elif isinstance(backend, str):
        names = [backend]
    else:
        names = list(backend)
    for n in names:
        reg.get(n)  # an unknown name lists the valid ones
    return names


def _calibrates(b: Backend, options: Mapping[str, Any]) -> bool:
    """Whether ``b``'s int8 cell quantizes statically when given calibration data: it is available, declares
    a static int8 mode, and the caller's ``options["int8"]`` (where ``b`` takes one) does not ask otherwise."""
    mode = options.get("int8") if "int8" in b.declared_options() else None
    return ("static" in b.capabilities.int8_modes and mode in (None, "auto", "static")
            and not b.supports(precision="int8") and safe_availability(b).available)


def _held_out(names, precisions, gate: Gate, spec, calibration, options) -> HeldOut | None:
    """The gate's data split for static int8 cells, when there is no ``calibration=`` and some cell calibrates;
    None when nothing needs one (the gate then scores all its data)."""
    if calibration is not None or "int8" not in precisions:
        return None
    reg = get_registry()
    if not any(_calibrates(reg.get(n), options) for n in names):
        return None
    return hold_out(gate, spec)


def _int8_calibration(b: Backend, options, calibration, held: HeldOut | None) -> tuple[Any, str | None]:
    """What ``b``'s int8 cell calibrates on (None: it quantizes without data), or why it cannot run. ``held``
    exists whenever a cell calibrates and ``calibration`` is None (:func:`_held_out`)."""
    if not _calibrates(b, options):
        return None, None
    if calibration is not None:
        return calibration, None
    if held.calibration is None:
        return None, f"no calibration data for static int8: {held.problem}"
    return held.calibration, None


def _calibration_note(calibration, held: HeldOut | None) -> dict[str, Any] | None:
    """What the int8 cells calibrated on, for the report: the held-out split (which samples, how many) or the
    caller's ``calibration=``."""
    if held is not None:
        return held.describe()
    if calibration is None:
        return None
    return {"source": "calibration=", **({"batches": len(calibration)} if hasattr(calibration, "__len__") else {})}


def _cell_calibration(note: dict[str, Any]) -> dict[str, Any]:
    """The few words of :func:`_calibration_note` a cell's row carries (the full note is in the selection's)."""
    return {k: note[k] for k in ("source", "samples", "batches") if k in note}


def _failure_figures(exc: BaseException) -> dict[str, Any]:
    """A failed cell's figures: the gate's (and the verification's) for a gate failure, the verification's
    headline figures for a verification failure, none for anything else."""
    figures = dict(getattr(exc, "figures", {}) or {})
    if isinstance(exc, VerificationError) and not isinstance(exc, GateError):
        return {"verification": summary(figures)}
    return figures


def _passed_figures(engine: Engine) -> dict[str, Any]:
    """A cell that passed: its gate and verification figures, and how int8 was made where it was."""
    info = engine.report.info
    int8 = info.get("int8_mode", info.get("int8")) if engine.precision == "int8" else None
    return {"gate": engine.report.gate, "verification": summary(engine.report.verification or {}),
            **({"int8": int8} if int8 else {})}


def _compile_cells(names, precisions, model, examples, spec, tree, *, device, gate, calibration, held, options,
                   cache) -> tuple[list[Candidate], dict[str, Engine]]:
    """Compile, verify and gate every cell; the report rows and the engines that passed."""
    reg = get_registry()
    cells: list[Candidate] = []
    engines: dict[str, Engine] = {}
    shown = Progress(len(names) * len(precisions), title='precision="auto"')
    note = _calibration_note(calibration, held)
    for name in names:
        b = reg.get(name)
        for precision in precisions:
            label = f"{name}/{precision}"
            shown.candidate(label)
            problem = b.supports(precision=precision)
            cal = None
            if not problem and precision == "int8":
                cal, problem = _int8_calibration(b, options, calibration, held)
            if problem:
                cells.append(Candidate(label, "skipped", problem))
                shown.done("skipped")
                continue
            calibrated = {"calibration": _cell_calibration(note)} if cal is not None else {}
            shown.stage("compiling, verifying, gating")
            try:
                engine = compile_one(b, model, examples, spec, tree, device=device, precision=precision,
                                     calibration=cal, options=dict(options), do_verify=True, cache=cache, gate=gate)
            except Exception as exc:  # noqa: BLE001 - every cell's failure is a reason in the report
                cells.append(Candidate(label, candidate_status(exc), reason(exc),
                                       figures=_failure_figures(exc) | calibrated))
                shown.done(candidate_status(exc))
                continue
            shown.done("passed the gate")
            engines[label] = engine
            cells.append(Candidate(label, "verified", "", device=engine.device,
                                   compile_time_s=engine.report.compile_time_s,
                                   figures=_passed_figures(engine) | calibrated))
    return cells, engines


def _time_cells(cells: list[Candidate], engines: dict[str, Engine], spec, budget_s: float) -> tuple[str, int]:
    """Time the passing cells side by side; their figures go on the report rows. The fastest, and the batch."""
    inputs, batch = timing_inputs(spec, Objective())
    calls = {}
    for label, engine in engines.items():
        dev_inputs = [x.to(engine.input_spec.device) for x in inputs]
        calls[label] = (lambda e=engine, xs=dev_inputs: e(*xs))
    Progress(len(calls), title='precision="auto"').note(f"timing {len(calls)} cells side by side "
                                                        f"(about {budget_s * len(calls):.1f}s)")
    timings = measure_interleaved(calls, budget_s=budget_s * len(calls), batch=batch)
    best = min(timings, key=lambda k: timings[k]["p50_ms"])
    fp32_ms = [t["p50_ms"] for k, t in timings.items() if k.endswith("/fp32")]
    for c in cells:
        if c.backend in timings:
            c.figures["p50_ms"] = timings[c.backend]["p50_ms"]
            if fp32_ms:
                c.figures["speedup_vs_best_fp32"] = min(fp32_ms) / timings[c.backend]["p50_ms"]
            c.status = "chosen" if c.backend == best else "verified"
    return best, batch
