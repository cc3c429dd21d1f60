"""``backend="auto"``: rank the registered backends for this hardware from what they declare. No timing.

The order is data, not code: each backend's ``Capabilities.priority`` maps a hardware class (``"nvidia"``,
``"apple"``, ``"intel-cpu"``, ``"cpu"``; ``"*"`` for the rest) to a rank, lower first. The built-in
backends declare, for instance, tensorrt first on NVIDIA GPUs, coreml first on Apple silicon, openvino
first on Intel CPUs and onnxruntime first on other CPUs. A third-party backend ranks itself the same way.

A backend is then dropped, with its reason, when it cannot serve what the model needs: the precision
asked for, a dynamic batch or other dynamic dimensions, the device asked for, or when it is not available
here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..plugin import hardware
from ..plugin.contract import Availability, Backend
from ..plugin.registry import get_registry, safe_availability
from ..plugin.spec import BATCH, InputSpec


@dataclass(frozen=True)
class Ranked:
    """One backend's place in the ranking, or why it was dropped (``reason``)."""

    name: str
    rank: int
    reason: str = ""
    availability: Availability | None = None

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
    hardware_class: str
    kept: list[Ranked] = field(default_factory=list)
    dropped: list[Ranked] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.kept]

    def to_dict(self) -> dict[str, Any]:
        return {"hardware_class": self.hardware_class,
                "order": [{"backend": r.name, "rank": r.rank} for r in self.kept],
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


def rank(precision: str = "fp32", *, spec: InputSpec | None = None, device: str = "auto",
         names: Sequence[str] | None = None, hardware_class: str | None = None,
         check_availability: bool = True) -> Ranking:
    """Rank ``names`` (default: every registered backend) for ``hardware_class`` (default: this machine's).

    Kept backends come in declared priority order, ties broken by name. With ``check_availability`` each
    backend is asked whether it runs here (this imports its runtime); an unavailable one is dropped with
    its own reason and fix.
    """
    reg = get_registry()
    hw_class = hardware_class or hardware.detect().hardware_class
    ranking = Ranking(hw_class)
    candidates = list(names) if names is not None else reg.names()
    entries = []
    for name in candidates:
        backend = reg.get(name)  # an unknown name lists the valid ones
        entries.append((backend.capabilities.rank_for(hw_class), name, backend))
    for rank_value, name, backend in sorted(entries, key=lambda e: (e[0], e[1])):
        problem = needs_problem(backend, precision=precision, spec=spec, device=device)
        av = None
        if problem is None and check_availability:
            av = safe_availability(backend)
            if not av.available:
                problem = f"not available: {av.reason}" + (f" (fix: {av.fix})" if av.fix else "")
        (ranking.dropped if problem else ranking.kept).append(Ranked(name, rank_value, problem or "", av))
    return ranking

