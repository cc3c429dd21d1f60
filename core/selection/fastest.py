"""``motorpool.select`` and ``backend="fastest"``: measure the candidates, keep the best, remember why.

For every candidate backend (those :mod:`motorpool.selection.ranking` keeps for this model, precision and
hardware): compile it, verify it against eager PyTorch, time it with warm-up within a budget, and rank
the verified ones by the caller's objective (:mod:`motorpool.selection.timing`). The best four (two at least)
are then timed again side by side in this process (a "run-off"), the way the caller will run the winner: its
engine, torch's thread count here (every candidate's own pool sized alike, in a child process too), the
objective's batch. The winner is decided on those figures, so that a load change on a busy machine between two
separate measurements cannot decide it; the report names the figures (measurement, batch, threads). A
candidate that fails, crashes or hangs is dropped with its reason (:mod:`motorpool.selection.isolate` runs
costly compilers in child processes).

The outcome is stored in the decision cache (:mod:`motorpool.selection.decisions`): ``backend="auto"`` then tries
the measured winner first, and ``fastest`` asked again compiles the winner only.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..engine.engine import Engine
from ..pipeline.prepare import as_module, prepare
from ..pipeline.threads import engine_threads
from ..plugin import hardware
from ..plugin.errors import CompileError
from ..plugin.paths import CacheWarning
from ..plugin.spec import InputSpec
from .auto import decision_key_for
from .decisions import Decision, DecisionCache
from .measured import RUNOFF, Dropped, Measured, Selection
from .progress import Progress
from .ranking import Ranking, rank
from .runs import CandidateRuns, compile_named
from .timing import Objective, measure_interleaved, timing_inputs

#: timing budget per candidate when the caller sets none (seconds; compile time is not counted)
DEFAULT_BUDGET_PER_CANDIDATE_S = 2.0
#: time limit for one candidate's compile + verify + timing
DEFAULT_TIMEOUT_S = 600.0
#: the best RUNOFF_MAX candidates (by their separate timings) are timed again side by side, and the decision is
#: taken on that: separate measurements on a shared machine can differ by more than the gap between two good
#: backends, 2x and more (2 shared cores: the same engine measured 14 ms alone and 5.6 ms side by side a minute
#: later), so no margin keeps a candidate out
RUNOFF_MAX = 4


# -- public entry points --------------------------------------------------------------------------------

def select(model: torch.nn.Module, example_inputs: Any, *, candidates: Sequence[str] | None = None,
           precision: str = "fp32", device: str = "auto", objective: str = "p50", budget_s: float | None = None,
           timeout_s: float | None = None, isolate: bool | str = "auto", use_cache: bool = True,
           progress: bool | None = None, dynamic_batch: bool = True,
           dynamic_dims: Mapping[str, Mapping[int, str]] | None = None, input_names: Sequence[str] | None = None,
           calibration: Iterable[Any] | None = None, options: Mapping[str, Any] | None = None,
           backends: Sequence[str] | None = None) -> Selection:
    """Measure the candidate backends for ``model`` and return their ranking; keeps no engine.

    ``candidates`` limits them (default: every backend ``auto`` keeps for this model), the same name
    ``compile(backend="fastest", candidates=...)`` takes; ``backends=`` is its old spelling. ``objective``
    is ``"p50"`` (latency at the example's batch size), ``"p90"``, ``"p99"``, ``"mean"`` or
    ``"throughput"``, each optionally at another batch size (``"throughput@32"``). ``budget_s`` is the
    total timing budget (default 2 s per candidate); ``timeout_s`` limits each candidate's compile, verify
    and timing (default 600 s). ``isolate``: True runs every candidate in a child process, False none,
    ``"auto"`` those whose compile is declared medium or high cost. A valid stored decision is returned
    as it is unless ``use_cache=False``; a fresh measurement is stored either way.
    """
    if backends is not None:
        if candidates is not None:
            raise TypeError("select: pass candidates= (backends= is its old spelling), not both")
        warnings.warn("motorpool.select(backends=...) is now candidates=..., as in compile", DeprecationWarning,
                      stacklevel=2)
        candidates = backends
    model = as_module(model)
    examples, spec, tree = prepare(model, example_inputs, dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims,
                                   input_names=input_names)
    selection, _ = _search(model, examples, spec, tree, names=candidates, device=device, precision=precision,
                           objective=objective, budget_s=budget_s, timeout_s=timeout_s, isolate=isolate,
                           use_cache=use_cache, progress=progress, calibration=calibration,
                           options=dict(options or {}), keep_winner=False)
    return selection


def compile_fastest(model: torch.nn.Module, examples: tuple, spec: InputSpec, tree, *,
                    candidates: Sequence[str] | None = None, device: str = "auto", precision: str = "fp32",
                    calibration: Any = None, options: Mapping[str, Any] | None = None, objective: str = "p50",
                    budget_s: float | None = None, timeout_s: float | None = None, isolate: bool | str = "auto",
                    use_cache: bool = True, progress: bool | None = None, cache: bool | None = None,
                    gate: Any = None) -> Engine:
    """``compile(backend="fastest")``: the winner's engine, with every candidate's figures in its report."""
    selection, engine = _search(model, examples, spec, tree, names=candidates, device=device,
                                precision=precision, objective=objective, budget_s=budget_s, timeout_s=timeout_s,
                                isolate=isolate, use_cache=use_cache, progress=progress, calibration=calibration,
                                options=dict(options or {}), keep_winner=True, cache=cache, gate=gate)
    assert engine is not None
    engine.report.candidates = selection.candidates()
    engine.report.info["selection"] = {
        "mode": "fastest", "objective": selection.objective, "from_cache": selection.from_cache,
        "decision": selection.decision_path, "elapsed_s": selection.elapsed_s, "auto_order": selection.auto_order,
        "decided_on": selection.decided_on(), "notes": selection.notes,
    }
    return engine


# -- the search --------------------------------------------------------------------------------

def _versions(ranking: Ranking) -> dict[str, dict[str, str]]:
    return {r.name: r.versions for r in ranking.kept}


def _search(model, examples, spec, tree, *, names, device, precision, objective, budget_s, timeout_s, isolate,
            use_cache, progress, calibration, options, keep_winner, cache=None, gate=None
            ) -> tuple[Selection, Engine | None]:
    obj = Objective.parse(objective)
    if isolate not in (True, False, "auto"):
        raise ValueError(f"isolate: expected True, False or 'auto', got {isolate!r}")
    started = time.perf_counter()
    ranking = rank(precision, spec=spec, device=device, names=names)
    selection = Selection(str(obj), precision, ranking.hardware_class, hardware.fingerprint(),
                          auto_order=rank(precision, spec=spec, device=device, check_availability=False).names
                          if names is not None else ranking.names)
    selection.dropped = [Dropped(r.name, "skipped", r.reason) for r in ranking.dropped]
    if not ranking.kept:
        raise CompileError("no candidate backend can serve this model here: " +
                           "; ".join(f"{d.backend}: {d.reason}" for d in selection.dropped),
                           reasons={d.backend: d.reason for d in selection.dropped})
    key = decision_key_for(model, spec, precision, device, str(obj))
    compile_args = dict(device=device, precision=precision, calibration=calibration, options=options, cache=cache,
                        gate=gate)
    if use_cache:
        reused = _reuse_decision(selection, key, ranking, model, examples, spec, tree, keep_winner, compile_args)
        if reused is not None:
            selection.elapsed_s = time.perf_counter() - started
            return selection, reused[0]
    per_candidate = (budget_s / len(ranking.kept)) if budget_s else DEFAULT_BUDGET_PER_CANDIDATE_S
    runs = CandidateRuns(model, examples, spec, tree, Path(tempfile.mkdtemp(prefix="motorpool-fastest-")),
                         objective=obj, budget_s=per_candidate, timeout_s=float(timeout_s or DEFAULT_TIMEOUT_S),
                         progress=Progress(len(ranking.kept), enabled=progress), **compile_args)
    try:
        engine = _measure(selection, runs, ranking.names, obj, per_candidate, isolate, keep_winner)
        if selection.ranking:
            _store_decision(selection, key, ranking, obj, precision=precision, device=device)
    finally:
        runs.cleanup()
    selection.elapsed_s = time.perf_counter() - started
    if not selection.ranking:
        raise CompileError("no candidate backend compiled and verified: " +
                           "; ".join(f"{d.backend}: {d.reason}" for d in selection.dropped),
                           reasons={d.backend: d.reason for d in selection.dropped})
    return selection, engine


def _reuse_decision(selection: Selection, key: str, ranking: Ranking, model, examples, spec, tree,
                    keep_winner: bool, compile_args: dict) -> tuple[Engine | None] | None:
    """A stored decision for these candidates and versions: the selection filled from it (and the winner's
    engine compiled when wanted), or None when there is none or its winner no longer compiles."""
    decisions = DecisionCache()
    decision = decisions.get(key, _versions(ranking))
    if decision is None or not set(ranking.names) <= set(decision.versions):
        return None
    engine = None
    try:
        if keep_winner:
            engine = compile_named(decision.winner, model, examples, spec, tree, **compile_args)
    except Exception as exc:  # noqa: BLE001 - the stored winner no longer compiles: measure afresh
        selection.notes.append(f"the stored decision's winner {decision.winner} failed now ({exc}); measured again")
        return None
    _from_decision(selection, decision, decisions.path(key))
    return (engine,)


def _measure(selection: Selection, runs: CandidateRuns, names: list[str], obj: Objective, per_candidate: float,
             isolate: bool | str, keep_winner: bool) -> Engine | None:
    """Run every candidate, rank the verified ones, time the close ones side by side; the winner's engine."""
    for name in names:
        outcome = runs.run(name, isolate)
        if isinstance(outcome, Dropped):
            selection.dropped.append(outcome)
            runs.progress.done(f"{outcome.status}: {outcome.reason[:100]}")
        else:
            selection.ranking.append(outcome)
            runs.progress.done(f"{obj.describe(outcome.figures)}")
    selection.ranking.sort(key=lambda m: m.score)
    _runoff(selection, runs, obj, per_candidate)
    selection.notes += runs.notes
    engine = None
    while keep_winner and selection.ranking and engine is None:
        try:
            engine = runs.winner_engine(selection)
        except Exception as exc:  # noqa: BLE001 - e.g. it loads here but no longer verifies: next one
            lost = selection.ranking.pop(0)
            selection.dropped.append(Dropped(lost.backend, "rejected", "won the timing, but in the "
                                             f"caller's process: {type(exc).__name__}: {exc}"))
    return engine


def _store_decision(selection: Selection, key: str, ranking: Ranking, obj: Objective, *, precision: str,
                    device: str) -> None:
    versions = _versions(ranking)
    decision = Decision(key, selection.winner, str(obj),
                        ranking=[{"backend": m.backend, "score": m.score, "device": m.device, "figures": m.figures,
                                  "compile_time_s": m.compile_time_s, "verification": m.verification,
                                  "runoff": m.runoff} for m in selection.ranking],
                        dropped=[asdict(d) for d in selection.dropped],
                        versions={n: versions[n] for n in ranking.names}, hardware=hardware.fingerprint(),
                        precision=precision, device=device)
    try:
        selection.decision_path = str(DecisionCache().put(decision))
    except OSError as exc:  # a cache that cannot be written (not private, read-only) is not a failed select
        warnings.warn(f"motorpool could not store the decision: {exc}", CacheWarning, stacklevel=3)


def _from_decision(selection: Selection, decision: Decision, path: Path) -> None:
    selection.from_cache = True
    selection.decision_path = str(path)
    selection.ranking = [Measured(m["backend"], float(m["score"]), m.get("device", "cpu"), m["figures"],
                                  m.get("compile_time_s"), m.get("verification"), runoff=m.get("runoff"))
                         for m in decision.ranking]
    seen = {d.backend for d in selection.dropped}
    selection.dropped += [Dropped(d["backend"], d["status"], d["reason"]) for d in decision.dropped
                          if d["backend"] not in seen]
    selection.notes.append(f"decision measured {decision.created}, stored in {path}")


def _runoff(selection: Selection, runs: "CandidateRuns", obj: Objective, per_candidate: float) -> None:
    """Time the best RUNOFF_MAX side by side in this process, as the caller will run the winner: its engine,
    its threads, the objective's batch. The ranking is then decided on these figures; a contender that cannot
    run here is dropped."""
    close = selection.ranking[:RUNOFF_MAX]
    if len(close) < 2:
        return
    engines = {m.backend: engine for m in close if (engine := _engine_here(selection, runs, m)) is not None}
    if len(engines) < 2:
        return
    inputs, batch = timing_inputs(runs.spec.with_device("cpu"), obj)
    calls = {}
    for name, engine in engines.items():
        dev_inputs = [x.to(engine.input_spec.device) for x in inputs]
        calls[name] = (lambda e, xs: (lambda: e(*xs)))(engine, dev_inputs)
    runs.progress.note(f"run-off between {', '.join(calls)}")
    figures = measure_interleaved(calls, budget_s=per_candidate * len(calls) / 2, batch=batch,
                                  device=next(iter(engines.values())).device)
    for m in selection.ranking:
        if m.backend in figures:
            m.runoff = {**figures[m.backend], "threads": engine_threads(engines[m.backend]), "measurement": RUNOFF}
    contenders = sorted((m for m in selection.ranking if m.runoff), key=lambda m: obj.score(m.runoff))
    selection.ranking = contenders + [m for m in selection.ranking if not m.runoff]
    selection.notes.append(f"decided on the {RUNOFF} ({obj}, batch {batch}, {_threads(contenders)}): " +
                           ", ".join(f"{m.backend} {obj.describe(m.runoff)}" for m in contenders))


def _engine_here(selection: Selection, runs: "CandidateRuns", m: Measured) -> Engine | None:
    """``m``'s engine in this process (compiled here when its child left none); None, with ``m`` dropped, when
    it cannot run here: then it cannot be the caller's engine either."""
    try:
        return runs.engine_here(m.backend)
    except Exception as exc:  # noqa: BLE001 - the reason goes into the report
        selection.ranking.remove(m)
        selection.dropped.append(Dropped(m.backend, "rejected", "timed in a child process, but in the caller's "
                                         f"process: {type(exc).__name__}: {exc}"))
        return None


def _threads(ranked: list[Measured]) -> str:
    counts = {m.runoff["threads"] for m in ranked}
    return f"{counts.pop()} threads" if len(counts) == 1 else "threads " + ", ".join(
        f"{m.backend} {m.runoff['threads']}" for m in ranked)
