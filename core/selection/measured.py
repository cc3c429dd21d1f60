"""What a measurement of the candidates found: :class:`Selection` (the verified candidates best first, the
dropped ones with reasons), as ``motorpool.select`` returns it and ``fastest`` reports it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..engine.report import Candidate
from .timing import Objective

#: which measurement a candidate's figures come from (their "measurement" key)
ALONE_HERE = "alone, in the caller's process"
ALONE_IN_CHILD = "alone, in a child process"
RUNOFF = "run-off, side by side in the caller's process"


@dataclass
class Measured:
    """A candidate that compiled, verified and was timed (``figures``), and timed again beside the other
    contenders when it was one (``runoff``)."""

    backend: str
    score: float
    device: str
    figures: dict[str, Any]
    compile_time_s: float | None = None
    verification: dict[str, Any] | None = None
    isolated: bool = False
    runoff: dict[str, Any] | None = None

    @property
    def decided_on(self) -> dict[str, Any]:
        """The figures it was ranked by: the run-off's when it was in one, else its own timing."""
        return self.runoff or self.figures


@dataclass
class Dropped:
    backend: str
    status: str  # "skipped" (cannot run or serve this here) or "rejected" (failed, crashed, hung, wrong)
    reason: str


@dataclass
class Selection:
    """What ``select`` found: the verified candidates best first, and why every other one was dropped."""

    objective: str
    precision: str
    hardware_class: str
    hardware_fingerprint: str
    ranking: list[Measured] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    #: what backend="auto" would try, in order, without timing
    auto_order: list[str] = field(default_factory=list)
    from_cache: bool = False
    decision_path: str | None = None
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def winner(self) -> str | None:
        return self.ranking[0].backend if self.ranking else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["winner"] = self.winner
        d["decided_on"] = self.decided_on()
        return d

    def decided_on(self) -> dict[str, Any]:
        """What the ranking was decided on, for the report: per candidate (best first) the measurement its
        figures come from, their batch and threads, and its score by the objective."""
        obj = Objective.parse(self.objective)
        return {"objective": self.objective, "candidates": [
            {"backend": m.backend, "measurement": m.decided_on.get("measurement"), "batch": m.decided_on.get("batch"),
             "threads": m.decided_on.get("threads"), "score": obj.score(m.decided_on)} for m in self.ranking]}

    def candidates(self) -> list[Candidate]:
        """The same, as the ``Candidate`` records of an engine's report."""
        obj = Objective.parse(self.objective)
        out = []
        best = self.ranking[0] if self.ranking else None
        for i, m in enumerate(self.ranking):
            if i == 0:
                reason = ""
            elif m.runoff and best.runoff:  # the side-by-side timings that chose the winner
                reason = (f"slower than {self.winner} side by side: {obj.describe(m.runoff)} vs "
                          f"{obj.describe(best.runoff)}")
            else:
                reason = f"slower than {self.winner}: {obj.describe(m.figures)} vs {obj.describe(best.figures)}"
            figures = {"objective": self.objective, "score": m.score, "timing": m.figures,
                       "decided_on": m.decided_on, "verification": m.verification}
            if m.runoff:
                figures["runoff"] = m.runoff
            out.append(Candidate(m.backend, "chosen" if i == 0 else "verified", reason, device=m.device,
                                 compile_time_s=m.compile_time_s, figures=figures))
        out += [Candidate(d.backend, d.status, d.reason) for d in self.dropped]
        return out

    def __str__(self) -> str:
        obj = Objective.parse(self.objective)
        head = (f"fastest by {self.objective} at {self.precision} on {self.hardware_class} "
                f"({'from the decision cache' if self.from_cache else f'measured in {self.elapsed_s:.1f}s'})")
        lines = [head, f"  {'backend':14s} {'device':8s} {'p50 ms':>9s} {'p99 ms':>9s} {'items/s':>10s} "
                       f"{'compile s':>9s}  note"]
        for i, m in enumerate(self.ranking):
            f = m.figures
            note = "chosen" if i == 0 else ""
            if m.runoff:
                note += (" " if note else "") + f"(run-off {obj.describe(m.runoff)})"
            lines.append(f"  {m.backend:14s} {m.device:8s} {f['p50_ms']:9.3f} {f['p99_ms']:9.3f} "
                         f"{f['throughput_per_s']:10.1f} {m.compile_time_s or 0:9.2f}  {note}")
        for d in self.dropped:
            lines.append(f"  {d.backend:14s} {d.status:8s} {d.reason}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
