"""``backend="auto"`` and lists of backends: the order to try, and the loop that keeps the first that works.

The order is the declared ranking (:mod:`.ranking`) for this machine and this model's traits
(:mod:`.model_traits`: its kind, read from one eager run, and what is asked of it), except that a valid
measured decision for this model, spec, precision and hardware (:mod:`.decisions`, written by ``fastest``)
puts its winner first. When the two leading candidates are ranked closer than ``CLEAR_CUT`` (a close call:
the declarations do not know which is faster here), ``auto`` compiles both and times them side by side for
about a second (``budget_s``; 0 never times), and keeps the faster; the report says so, with the figures.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..engine.engine import Engine
from ..engine.fingerprint import model_fingerprint
from ..engine.report import Candidate
from ..pipeline.candidate import as_compile_error, candidate_status, compile_one, reason
from ..plugin import hardware
from ..plugin.errors import CompileError
from ..plugin.paths import CacheWarning
from ..plugin.priority import CLEAR_CUT
from ..plugin.registry import get_registry, safe_availability
from ..plugin.spec import InputSpec
from .decisions import Decision, DecisionCache, decision_key
from .model_traits import read_traits
from .ranking import Ranked, Ranking, rank
from .timing import Objective, measure_interleaved, timing_inputs

#: seconds ``auto`` spends timing the top two candidates of a close call, when the caller sets none
AUTO_TIMING_BUDGET_S = 1.0


def decision_key_for(model, spec, precision, device, objective) -> str:
    """The decision-cache key of this model, spec, precision, device and objective."""
    return decision_key(model_fp=model_fingerprint(model), spec=spec, precision=precision, device=device,
                        objective=objective)


@dataclass
class Plan:
    """The backends to try, in order, and how the order was made."""

    order: list[str]
    single: bool = False  # the user named exactly one backend
    dropped: list[Candidate] = field(default_factory=list)  # what "auto" dropped, with reasons
    note: dict[str, Any] = field(default_factory=dict)  # for the report's info["selection"]
    ranking: Ranking | None = None  # "auto"'s declared ranking; None for a name or a list
    measured: bool = False  # the order came from a stored measurement
    key: str | None = None  # the decision-cache key of this model, spec, precision, device and objective
    device: str = "auto"

    def rivals(self, first: str) -> list[str]:
        """The candidates after ``first`` that the declared ranking cannot tell apart from it, in order: the
        first of them that compiles is timed against it."""
        if self.ranking is None or self.measured or first not in self.order:
            return []
        rest = self.order[self.order.index(first) + 1:]
        return [n for n in rest if not self.ranking.clear_cut(first, n)]


def auto_plan(precision: str, *, spec: InputSpec, device: str, model: torch.nn.Module | None,
              examples: tuple | None = None, objective: str = "p50", names: Sequence[str] | None = None) -> Plan:
    """``backend="auto"``: the ranking for this machine and model, or a stored decision's order."""
    traits = read_traits(model, examples, spec, precision) if model is not None and examples is not None else None
    # Availability is not asked here: compile's loop asks each backend in turn and stops at the first that
    # works, so "auto" imports one runtime (two for a close call), not all of them.
    ranking = rank(precision, spec=spec, device=device, names=names, check_availability=False,
                   traits=traits.traits if traits else ())
    plan = Plan(ranking.names, dropped=[Candidate(r.name, "skipped", r.reason) for r in ranking.dropped],
                ranking=ranking)
    plan.note = {"mode": "auto", "hardware_class": ranking.hardware_class, "situation": ranking.situation.to_dict(),
                 "ranked": [{"backend": r.name, "rank": r.rank, "rule": r.rule} for r in ranking.kept]}
    if traits is not None:
        plan.note["model"] = traits.to_dict()
    if model is not None and plan.order:
        plan.key = decision_key_for(model, spec, precision, device, str(Objective.parse(objective)))
        plan.device = device
        decision, path = cached_decision(plan.key)
        if decision is not None:
            measured = [m["backend"] for m in decision.ranking if m["backend"] in plan.order]
            plan.order = measured + [n for n in plan.order if n not in measured]
            plan.measured = True
            plan.note.update(source="decision cache", decision=str(path), objective=decision.objective,
                             measured_winner=decision.winner)
    return plan


def cached_decision(key: str) -> tuple[Decision | None, Path | None]:
    """The decision stored under ``key`` if still valid for the versions of the backends it measured (asked of
    those only)."""
    decisions = DecisionCache()
    decision = decisions.get(key)
    if decision is None:
        return None, None
    if decision.stale_because(current_versions(decision.versions)):
        return None, None
    return decision, decisions.path(key)


def current_versions(names) -> dict[str, dict[str, str]]:
    """The versions each of ``names`` reports now (the decision cache keys on these); a backend that is not
    registered or not available here reports none."""
    reg = get_registry()
    out = {}
    for name in names:
        if name in reg.names():
            av = safe_availability(reg.get(name))
            if av.available:
                out[name] = Ranked(name, 0, availability=av).versions
    return out


def plan_for(backend: str | Sequence[str], precision: str, *, spec: InputSpec, device: str = "auto",
             model: torch.nn.Module | None = None, examples: tuple | None = None, objective: str = "p50",
             candidates: Sequence[str] | None = None) -> Plan:
    """The backends to try for ``backend`` (one name, a list, or "auto"), in order."""
    reg = get_registry()
    if isinstance(backend, str) and backend != "auto":
        reg.get(backend)  # an unknown name lists the valid ones
        return Plan([backend], single=True)
    if isinstance(backend, str):
        return auto_plan(precision, spec=spec, device=device, model=model, examples=examples, objective=objective,
                         names=candidates)
    names = list(backend)
    if not names:
        raise ValueError("backend: an empty list names no backend to try")
    for n in names:
        reg.get(n)
    return Plan(names)


def compile_in_order(model: torch.nn.Module, examples: tuple, spec: InputSpec, tree, *,
                     backend: str | Sequence[str], device: str, precision: str, calibration: Any,
                     options: dict, verify: bool, objective: str, candidates: Sequence[str] | None,
                     cache: bool | None, gate: Any, budget_s: float | None = None) -> Engine:
    """Try the backends in order and return the first engine that compiles and verifies (under "auto", the
    faster of the first two when the ranking is a close call). A backend the user named alone raises its
    failure; under "auto" or a list, a failing candidate is skipped with its reason."""
    plan = plan_for(backend, precision, spec=spec, device=device, model=model, examples=examples,
                    objective=objective, candidates=candidates)
    reg = get_registry()
    tried: list[Candidate] = []
    last_exc: Exception | None = None

    def attempt(name: str) -> Engine | None:
        nonlocal last_exc
        try:
            engine = compile_one(reg.get(name), model, examples, spec, tree, device=device, precision=precision,
                                 calibration=calibration, options=dict(options), do_verify=verify, cache=cache,
                                 gate=gate)
        except Exception as exc:  # noqa: BLE001 - each candidate's failure is a reason
            if plan.single:
                raise as_compile_error(exc, name) from exc
            last_exc = exc
            tried.append(Candidate(name, candidate_status(exc), reason(exc),
                                   figures=getattr(exc, "figures", {}) or {}))
            return None
        tried.append(Candidate(name, "chosen", "", device=engine.device, compile_time_s=engine.report.compile_time_s,
                               figures=engine.report.verification or {}))
        return engine

    for name in plan.order:
        engine = attempt(name)
        if engine is None:
            continue
        rivals = plan.rivals(name)
        budget = AUTO_TIMING_BUDGET_S if budget_s is None else budget_s
        if rivals and budget > 0:
            engine = settle_close_call(engine, rivals, attempt, tried, plan, Objective.parse(objective), budget)
        engine.report.candidates = tried + plan.dropped
        if plan.note:
            engine.report.info["selection"] = plan.note
        return engine
    reasons = {c.backend: c.reason for c in tried + plan.dropped}
    if not reasons:
        raise CompileError("no backend could compile this model: no backend is registered: " + reg.why_empty())
    raise CompileError("no backend could compile this model: " +
                       "; ".join(f"{k}: {v}" for k, v in reasons.items()), reasons=reasons) from last_exc


def settle_close_call(engine: Engine, rivals: list[str], attempt, tried: list[Candidate], plan: Plan,
                      obj: Objective, budget_s: float) -> Engine:
    """Compile the first of ``rivals`` that works, time it beside ``engine`` for ``budget_s`` at the objective's
    batch, and return the faster. The loser stays in the report as "verified", with its figures; a rival that
    failed as "rejected" or "skipped", with its reason."""
    first = engine.report.backend
    ranks = {r["backend"]: r for r in plan.note.get("ranked", [])}
    failed = []
    for rival in rivals:
        other = attempt(rival)
        if other is not None:
            break
        failed.append(f"{rival} did not compile: {tried[-1].reason}")
    else:
        plan.note["timed"] = {"why": f"{', '.join(rivals)} ranked closer than {CLEAR_CUT} to {first}",
                              "skipped": "; ".join(failed)}
        return engine
    why = (f"{first} (rank {ranks[first]['rank']}, {ranks[first]['rule'] or 'no key'}) and {rival} "
           f"(rank {ranks[rival]['rank']}, {ranks[rival]['rule'] or 'no key'}) are ranked closer than "
           f"{CLEAR_CUT}: timed side by side" + (f" ({'; '.join(failed)})" if failed else ""))
    engines = {first: engine, rival: other}
    inputs, batch = timing_inputs(engine.input_spec.with_device("cpu"), obj)
    calls = {name: (lambda e, xs: (lambda: e(*xs)))(e, [x.to(e.input_spec.device) for x in inputs])
             for name, e in engines.items()}
    figures = measure_interleaved(calls, budget_s=budget_s, batch=batch, device=engine.device)
    winner = min(figures, key=lambda n: obj.score(figures[n]))
    for c in tried:
        if c.backend in engines:
            c.status = "chosen" if c.backend == winner else "verified"
            c.figures = {**c.figures, "runoff": figures[c.backend]}
            if c.backend != winner:
                c.reason = f"slower beside {winner}: {obj.describe(figures[c.backend])} vs " \
                           f"{obj.describe(figures[winner])}"
    plan.note["timed"] = {"why": why, "objective": str(obj), "batch": batch, "budget_s": budget_s,
                          "figures": figures, "winner": winner}
    path = remember(plan, engine, figures, obj)
    if path is not None:
        plan.note["timed"]["decision"] = str(path)
    return engines[winner]


def remember(plan: Plan, engine: Engine, figures: dict[str, dict[str, Any]], obj: Objective) -> Path | None:
    """Store the close call as a decision, so the next ``auto`` for this model compiles the winner only (and
    ``fastest`` over just these two may reuse it). A cache that cannot be written costs only that."""
    if plan.key is None:
        return None
    versions = current_versions(figures)
    ranking = sorted(({"backend": n, "score": obj.score(f), "device": engine.device, "figures": f,
                       "source": "auto: a close call timed side by side"} for n, f in figures.items()),
                     key=lambda m: m["score"])
    decision = Decision(plan.key, ranking[0]["backend"], str(obj), ranking=ranking, versions=versions,
                        hardware=hardware.fingerprint(), precision=engine.precision, device=plan.device)
    try:
        return DecisionCache().put(decision)
    except OSError as exc:
        warnings.warn(f"motorpool could not store auto's timing as a decision: {exc}", CacheWarning, stacklevel=4)
        return None
