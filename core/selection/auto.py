"""``backend="auto"`` and lists of backends: the order to try, and the loop that keeps the first that works.

The order is the declared ranking (:mod:`.ranking`), except that a valid measured decision for this model,
spec, precision and hardware (:mod:`.decisions`, written by ``fastest``) puts its winner first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..engine.engine import Engine
from ..engine.report import Candidate
from ..pipeline.candidate import as_compile_error, candidate_status, compile_one, reason
from ..plugin.errors import CompileError
from ..plugin.registry import get_registry, safe_availability
from ..plugin.spec import InputSpec
from ..engine.fingerprint import model_fingerprint
from .decisions import Decision, DecisionCache, decision_key
from .ranking import Ranked, rank
from .timing import Objective


def decision_key_for(model, spec, precision, device, objective) -> str:
    """The decision-cache key of this model, spec, precision, device and objective."""
    return decision_key(model_fp=model_fingerprint(model), spec=spec, precision=precision, device=device,
                        objective=objective)


def auto_candidates(precision: str, *, spec: InputSpec, device: str, model: torch.nn.Module | None,
                    objective: str = "p50", names: Sequence[str] | None = None
                    ) -> tuple[list[str], list[Candidate], dict[str, Any]]:
    """``backend="auto"``: the order to try, the backends dropped with reasons, and how the order was made.

    The order is the declared ranking, except that a valid measured decision for this model, spec,
    precision and hardware puts its winner (and then its measured runners-up) first.
    """
    # Availability is not asked here: compile's loop asks each backend in turn and stops at the first that
    # works, so "auto" imports one runtime, not all of them.
    ranking = rank(precision, spec=spec, device=device, names=names, check_availability=False)
    order = ranking.names
    skipped = [Candidate(r.name, "skipped", r.reason) for r in ranking.dropped]
    note: dict[str, Any] = {"mode": "auto", "hardware_class": ranking.hardware_class, "ranked": list(order)}
    if model is not None and order:
        decision, path = cached_decision(model, spec, precision, device, str(Objective.parse(objective)))
        if decision is not None:
            measured = [m["backend"] for m in decision.ranking if m["backend"] in order]
            order = measured + [n for n in order if n not in measured]
            note.update(source="decision cache", decision=str(path), objective=decision.objective,
                        measured_winner=decision.winner)
    return order, skipped, note


def cached_decision(model, spec, precision, device, objective) -> tuple[Decision | None, Path | None]:
    """A stored decision still valid for the versions of the backends it measured (asked of those only)."""
    decisions = DecisionCache()
    key = decision_key_for(model, spec, precision, device, objective)
    decision = decisions.get(key)
    if decision is None:
        return None, None
    reg = get_registry()
    current = {}
    for name in decision.versions:
        if name in reg.names():
            av = safe_availability(reg.get(name))
            if av.available:
                current[name] = Ranked(name, 0, availability=av).versions
    if decision.stale_because(current):
        return None, None
    return decision, decisions.path(key)


def candidate_order(backend: str | Sequence[str], precision: str, *, spec: InputSpec, device: str = "auto",
                    model: torch.nn.Module | None = None, objective: str = "p50",
                    candidates: Sequence[str] | None = None) -> tuple[list[str], bool, list[Candidate], dict]:
    """The backend names to try, in order; whether the user named exactly one; the backends "auto" dropped
    (with reasons); and how the order was made (for the report)."""
    reg = get_registry()
    if isinstance(backend, str) and backend != "auto":
        reg.get(backend)  # an unknown name lists the valid ones
        return [backend], True, [], {}
    if isinstance(backend, str):
        order, skipped, note = auto_candidates(precision, spec=spec, device=device, model=model,
                                               objective=objective, names=candidates)
        return order, False, skipped, note
    names = list(backend)
    if not names:
        raise ValueError("backend: an empty list names no backend to try")
    for n in names:
        reg.get(n)
    return names, False, [], {}


def compile_in_order(model: torch.nn.Module, examples: tuple, spec: InputSpec, tree, *,
                     backend: str | Sequence[str], device: str, precision: str, calibration: Any,
                     options: dict, verify: bool, objective: str, candidates: Sequence[str] | None,
                     cache: bool | None, gate: Any) -> Engine:
    """Try the backends in order and return the first engine that compiles and verifies. A backend the user
    named alone raises its failure; under "auto" or a list, a failing candidate is skipped with its reason."""
    order, single, dropped, how = candidate_order(backend, precision, spec=spec, device=device, model=model,
                                                  objective=objective, candidates=candidates)
    reg = get_registry()
    tried: list[Candidate] = []
    last_exc: Exception | None = None
    for name in order:
        try:
            engine = compile_one(reg.get(name), model, examples, spec, tree, device=device, precision=precision,
                                 calibration=calibration, options=dict(options), do_verify=verify, cache=cache,
                                 gate=gate)
        except Exception as exc:  # noqa: BLE001 - each candidate's failure is a reason
            if single:
                raise as_compile_error(exc, name) from exc
            last_exc = exc
            tried.append(Candidate(name, candidate_status(exc), reason(exc),
                                   figures=getattr(exc, "figures", {}) or {}))
            continue
        tried.append(Candidate(name, "chosen", "", device=engine.device, compile_time_s=engine.report.compile_time_s,
                               figures=engine.report.verification or {}))
        engine.report.candidates = tried + dropped
        if how:
            engine.report.info["selection"] = how
        return engine
    reasons = {c.backend: c.reason for c in tried + dropped}
    if not reasons:
        raise CompileError("no backend could compile this model: no backend is registered: " + reg.why_empty())
    raise CompileError("no backend could compile this model: " +
                       "; ".join(f"{k}: {v}" for k, v in reasons.items()), reasons=reasons) from last_exc
