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
        if self.info.get("selection", {}).get("mode") == "auto":
            lines.append(auto_line(self.info["selection"]))
        width = max([14] + [len(c.backend) for c in self.candidates])
        for c in self.candidates:
            figures = candidate_figures(c.figures)
            text = "; ".join(x for x in (figures, c.reason) if x)
            lines.append(f"  {c.backend:{width}s} {c.status:9s} {text}".rstrip())
        return "\n".join(lines)


def auto_line(sel: dict[str, Any]) -> str:
    """How ``auto`` chose, in one line: the model's kind, and the declared rank or the timing that decided."""
    kind = sel.get("model", {}).get("kind")
    head = f"auto: {kind + ' model' if kind else 'the model'} on {sel.get('hardware_class', '?')}"
    if sel.get("source") == "decision cache":
        return f"{head}; the stored measurement's winner first ({sel.get('decision')})"
    timed = sel.get("timed")
    if timed and timed.get("winner"):
        return f"{head}; a close call, timed side by side for {timed['budget_s']:g}s: {timed['winner']} was faster"
    if timed:
        return f"{head}; a close call, not timed: {timed.get('skipped')}"
    ranked = sel.get("ranked") or [{}]
    return f"{head}; ranked first by its declared priority ({ranked[0].get('rule') or 'no key matched'})"


def candidate_figures(f: dict[str, Any]) -> str:
    """A candidate's figures in a few words: the side-by-side (run-off) timing when there was one, else its
    timing, its speed-up over fp32, its gate figure, its verification's cosine and what it calibrated on
    (``precision="auto"`` cells)."""
    if not f:
        return ""
    parts = []
    timing = f.get("runoff") or f.get("timing") or f
    if isinstance(timing, dict) and timing.get("p50_ms") is not None:
        parts.append(f"p50 {timing['p50_ms']:.3f} ms" + (" (run-off)" if f.get("runoff") else ""))
    if f.get("speedup_vs_best_fp32") is not None:
        parts.append(f"{f['speedup_vs_best_fp32']:.2f}x vs fp32")
    g = f.get("gate")
    if isinstance(g, dict) and g.get("metric"):
        score, drop, budget = g.get("score"), g.get("drop"), g.get("max_drop")
        text = f"gate {g['metric']} " + (f"{score:.4f}" if isinstance(score, (int, float)) else "?")
        if isinstance(drop, (int, float)):
            text += f" (drop {drop:.4f}" + (f" {'<=' if g.get('passed') else '>'} {budget:g})" if budget is not None
                                           else ")")
        parts.append(text)
    v = f.get("verification")
    if isinstance(v, dict) and isinstance(v.get("min_cosine"), (int, float)):
        parts.append(f"cosine {v['min_cosine']:.4f}")
    c = f.get("calibration")
    if isinstance(c, dict) and c.get("source"):
        size = f"{c['samples']} samples" if c.get("samples") else f"{c.get('batches', '?')} batches"
        parts.append(f"calibrated on {size} ({c['source']})")
    return ", ".join(parts)
