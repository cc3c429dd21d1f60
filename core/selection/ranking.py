"""``backend="auto"``: rank the registered backends for this hardware and this model from what they declare.

The order is data, not code: each backend's ``Capabilities.priority`` maps situations (the hardware, the CPU
features it needs, the model's traits: ``"cpu+avx512f/attention"``; see :mod:`motorpool.plugin.priority`) to a
rank, lower first, and the most specific key that matches decides. The built-in backends declare, for
instance, tensorrt first on NVIDIA GPUs, coreml first on Apple silicon, openvino first for attention models
on CPUs with AVX-512, and onnxruntime and openvino level for convolutional, recurrent and dense models on
CPUs (a close call, which ``auto`` settles by timing the two: :mod:`.auto`). A third-party backend ranks
itself the same way.

A backend is then dropped, with its reason, when it cannot serve what the model needs: the precision
asked for, a dynamic batch or other dynamic dimensions, the device asked for, or when it is not available
here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..plugin.contract import Availability, Backend
from ..plugin.priority import CLEAR_CUT, Situation
from ..plugin.registry import get_registry, safe_availability
from ..plugin.spec import BATCH, InputSpec


@dataclass(frozen=True)
class Ranked:
    """One backend's place in the ranking, or why it was dropped (``reason``)."""

    name: str
    rank: int
    reason: str = ""
    availability: Availability | None = None
    rule: str = ""  # the priority key that decided the rank ("": none matched)

    @property
    def kept(self) -> bool:
        return not self.reason

    @property
    def versions(self) -> dict[str, str]:
        """The versions its availability reports (the decision cache keys on these)."""
        av = self.availability
        if av is None:
            return {}
        out = dict(av.versions)
        if av.version:
            out.setdefault(self.name, av.version)
        return out


@dataclass
class Ranking:
    situation: Situation
    kept: list[Ranked] = field(default_factory=list)
    dropped: list[Ranked] = field(default_factory=list)

    @property
    def hardware_class(self) -> str:
        return self.situation.hardware

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.kept]

    def rank_of(self, name: str) -> int | None:
        return next((r.rank for r in self.kept if r.name == name), None)

    def clear_cut(self, first: str, second: str) -> bool:
        """Whether ``first`` is ranked at least CLEAR_CUT ahead of ``second``."""
        a, b = self.rank_of(first), self.rank_of(second)
        return a is None or b is None or b - a >= CLEAR_CUT

    def describe(self) -> str:
        """The order in one line: ``a ~ b > c``, where ``~`` marks the close call ``auto`` settles by timing."""
        names = self.names
        if not names:
            return "no backend available"
        sep = " ~ " if len(names) > 1 and not self.clear_cut(names[0], names[1]) else " > "
        return names[0] + (sep + " > ".join(names[1:]) if names[1:] else "")

    def to_dict(self) -> dict[str, Any]:
        return {"situation": self.situation.to_dict(),
                "order": [{"backend": r.name, "rank": r.rank, "rule": r.rule} for r in self.kept],
                "dropped": [{"backend": r.name, "rank": r.rank, "reason": r.reason} for r in self.dropped]}


def needs_problem(backend: Backend, *, precision: str, spec: InputSpec | None, device: str = "auto") -> str | None:
    """Why ``backend`` cannot serve this model's needs as declared, or None. Costs no import."""
    problem = backend.supports(precision=precision, device=None if device == "auto" else device)
    if problem:
        return problem
    caps = backend.capabilities
    if spec is not None:
        dims = spec.dynamic_dims
        if BATCH in dims and not caps.dynamic_batch:
            return (f"{backend.name} compiles a static batch size only and this spec has a dynamic batch "
                    "(pass dynamic_batch=False to compile for the example's batch size)")
        others = sorted(dims - {BATCH})
        if others and not caps.dynamic_shapes:
            return (f"{backend.name} does not support dynamic dimensions other than the batch; this spec "
                    f"names {', '.join(others)}")
    return None


def situation_for(precision: str, *, traits: Iterable[str] = (), hardware_class: str | None = None) -> Situation:
    """The situation the priorities are matched against: this machine (or only ``hardware_class``, with no
    features: for tests and for reading a declaration), the model's ``traits`` and the precision."""
    traits = set(traits) | {precision}
    if hardware_class is None:
        return Situation.here(traits)
    return Situation(hardware_class, traits=frozenset(traits))


def rank(precision: str = "fp32", *, spec: InputSpec | None = None, device: str = "auto",
         names: Sequence[str] | None = None, hardware_class: str | None = None,
         check_availability: bool = True, traits: Iterable[str] = (),
         situation: Situation | None = None) -> Ranking:
    """Rank ``names`` (default: every registered backend) for ``situation`` (default: this machine, the
    model's ``traits`` and ``precision``; ``hardware_class`` names a class instead of this machine).

    Kept backends come in declared priority order, ties broken by name. With ``check_availability`` each
    backend is asked whether it runs here (this imports its runtime); an unavailable one is dropped with
    its own reason and fix.
    """
    reg = get_registry()
    situation = situation or situation_for(precision, traits=traits, hardware_class=hardware_class)
    ranking = Ranking(situation)
    candidates = list(names) if names is not None else reg.names()
    entries = []
    for name in candidates:
        backend = reg.get(name)  # an unknown name lists the valid ones
        rank_value, rule = backend.capabilities.priority_for(situation)
        entries.append((rank_value, name, rule, backend))
    for rank_value, name, rule, backend in sorted(entries, key=lambda e: (e[0], e[1])):
        problem = needs_problem(backend, precision=precision, spec=spec, device=device)
        av = None
        if problem is None and check_availability:
            av = safe_availability(backend)
            if not av.available:
                problem = f"not available: {av.reason}" + (f" (fix: {av.fix})" if av.fix else "")
        (ranking.dropped if problem else ranking.kept).append(Ranked(name, rank_value, problem or "", av, rule))
    return ranking

