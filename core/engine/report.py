"""What an engine reports about itself and about how it was chosen."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Candidate:
    """One backend tried by compile: what happened to it and its figures.

    ``status``: ``"chosen"`` (the engine returned), ``"verified"`` (compiled and verified, not the fastest),
    ``"skipped"`` (could not try: unavailable, unsupported precision or device) or ``"rejected"`` (tried and
    failed: compile error, verification or gate failure, crash, hang). ``reason`` says why for the last two;
    ``figures`` holds its verification, timing or gate figures where there are any.
    """

    backend: str
    status: str  # "chosen", "rejected", "skipped", "verified"
    reason: str = ""
    device: str | None = None
    compile_time_s: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """What an engine is and how it came to be (``engine.report``; ``print`` it).

    ``compile_time_s`` is None for an engine loaded without compiling; ``load_time_s`` is set when it came from
    disk or the artifact cache. ``verification`` holds the figures of the check against eager PyTorch
    (``passed``, ``max_abs_err``, ``max_rel_err``, ``min_cosine``, ``tolerance`` and every ``checks`` entry).
    ``candidates`` lists every backend tried. ``info`` carries the rest, by key: ``versions`` (the runtime's
    versions), ``cache`` (``hit``, ``path``, ``key``, or why the engine was not stored), ``selection`` (how the
    backend was chosen: ``mode`` auto / fastest / precision-search, the order or objective, the figures it
    decided on), and the runner's own notes (``runtime``, ``exporter``, ``converter``, ``providers``, int8
    details, ...).
    """

    backend: str
    device: str
    precision: str
    compile_time_s: float | None = None
    load_time_s: float | None = None
    verification: dict[str, Any] | None = None
    #: the quality gate's figures (motorpool.Gate): metric, score, baseline, drop, budget, passed
    gate: dict[str, Any] | None = None
    candidates: list[Candidate] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"backend={self.backend} device={self.device} precision={self.precision}"]
        if self.compile_time_s is not None:
            lines.append(f"compile time {self.compile_time_s:.2f}s")
        if self.load_time_s is not None:
            lines.append(f"load time {self.load_time_s:.2f}s")
        v = self.verification
        if v:
            lines.append(f"verified: {len(v.get('checks', []))} checks, max abs err {v.get('max_abs_err', 0):.3g}, "
                         f"min cosine {v.get('min_cosine', 1):.6f}")
        if self.gate:
            g = self.gate
            lines.append(f"gate {g.get('metric')}: drop {g.get('drop', float('nan')):.4g} (budget "
                         f"{g.get('max_drop')}) {'passed' if g.get('passed') else 'FAILED'}")
        for c in self.candidates:
            lines.append(f"  {c.backend:14s} {c.status:9s} {c.reason}")
        return "\n".join(lines)
