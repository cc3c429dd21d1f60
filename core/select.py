"""``motorpool.select`` and ``backend="fastest"``: measure the candidates, keep the best, remember why.

For every candidate backend (those :mod:`motorpool.ranking` keeps for this model, precision and
hardware): compile it, verify it against eager PyTorch, time it with warm-up within a budget, and rank
the verified ones by the caller's objective (:mod:`motorpool.timing`). The best few (up to 4, within 2x
of the best) are then timed again side by side in this process (a "run-off"), so that a load change on
a busy machine between two separate measurements cannot decide the winner. A candidate that fails, crashes or
hangs is dropped with its reason (:mod:`motorpool.isolate` runs costly compilers in child processes).

The outcome is stored in the decision cache (:mod:`motorpool.decisions`): ``backend="auto"`` then tries
the measured winner first, and ``fastest`` asked again compiles the winner only.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from . import hardware
from .decisions import Decision, DecisionCache, decision_key, model_fingerprint
from .engine import Engine
from .errors import CompileError
from .progress import Progress
from .ranking import Ranking, rank
from .registry import get_registry
from .report import Candidate
from .spec import InputSpec
from .timing import Objective, measure_interleaved, timing_inputs

#: timing budget per candidate when the caller sets none (seconds; compile time is not counted)
DEFAULT_BUDGET_PER_CANDIDATE_S = 2.0
#: time limit for one candidate's compile + verify + timing
DEFAULT_TIMEOUT_S = 600.0
#: candidates within this fraction of the best are timed again side by side (at most RUNOFF_MAX of them):
#: separate measurements on a shared machine can differ by more than the gap between two good backends
#: (2 shared cores: the same engine measured 14 ms alone and 5.6 ms side by side a minute later)
RUNOFF_MARGIN = 1.0
RUNOFF_MAX = 4
#: compile costs run in a child process under isolate="auto"
ISOLATED_COSTS = frozenset({"medium", "high"})


@dataclass
class Measured:
    """A candidate that compiled, verified and was timed."""

    backend: str
    score: float
    device: str
    figures: dict[str, Any]
    compile_time_s: float | None = None
    verification: dict[str, Any] | None = None
    isolated: bool = False
    runoff: dict[str, Any] | None = None


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
        return d

    def candidates(self) -> list[Candidate]:
        """The same, as the ``Candidate`` records of an engine's report."""
        obj = Objective.parse(self.objective)
        out = []
        for i, m in enumerate(self.ranking):
            reason = "" if i == 0 else (f"slower than {self.winner}: {obj.describe(m.figures)} vs "
                                        f"{obj.describe(self.ranking[0].figures)}")
            figures = {"objective": self.objective, "score": m.score, "timing": m.figures,
                       "verification": m.verification}
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


# -- public entry points --------------------------------------------------------------------------------

def select(model: torch.nn.Module, example_inputs: Any, *, backends: Sequence[str] | None = None,
           precision: str = "fp32", device: str = "auto", objective: str = "p50", budget_s: float | None = None,
           timeout_s: float | None = None, isolate: bool | str = "auto", use_cache: bool = True,
           progress: bool | None = None, dynamic_batch: bool = True,
           dynamic_dims: Mapping[str, Mapping[int, str]] | None = None, input_names: Sequence[str] | None = None,
           calibration: Iterable[Any] | None = None, options: Mapping[str, Any] | None = None) -> Selection:
    """Measure the candidate backends for ``model`` and return their ranking; keeps no engine.

    ``backends`` limits the candidates (default: every backend ``auto`` keeps for this model). ``objective``
    is ``"p50"`` (latency at the example's batch size), ``"p90"``, ``"p99"``, ``"mean"`` or
    ``"throughput"``, each optionally at another batch size (``"throughput@32"``). ``budget_s`` is the
    total timing budget (default 2 s per candidate); ``timeout_s`` limits each candidate's compile, verify
    and timing (default 600 s). ``isolate``: True runs every candidate in a child process, False none,
    ``"auto"`` those whose compile is declared medium or high cost. A valid stored decision is returned
    as it is unless ``use_cache=False``; a fresh measurement is stored either way.
    """
    model, examples, spec, tree = _prepare(model, example_inputs, dynamic_batch=dynamic_batch,
                                           dynamic_dims=dynamic_dims, input_names=input_names)
    selection, _ = _search(model, examples, spec, tree, names=backends, device=device, precision=precision,
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
        "notes": selection.notes,
    }
    return engine


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
        decision, path = _cached_decision(model, spec, precision, device, str(Objective.parse(objective)))
        if decision is not None:
            measured = [m["backend"] for m in decision.ranking if m["backend"] in order]
            order = measured + [n for n in order if n not in measured]
            note.update(source="decision cache", decision=str(path), objective=decision.objective,
                        measured_winner=decision.winner)
    return order, skipped, note


# -- the search -------------------------------------------------------------------------------------------

def _prepare(model, example_inputs, *, dynamic_batch, dynamic_dims, input_names):
    from .compile import prepare

    examples, spec, tree = prepare(model, example_inputs, dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims,
                                   input_names=input_names)
    return model, examples, spec, tree


def _versions(ranking: Ranking) -> dict[str, dict[str, str]]:
    return {r.name: r.versions for r in ranking.kept}


def _key(model, spec, precision, device, objective) -> str:
    return decision_key(model_fp=model_fingerprint(model), spec=spec, precision=precision, device=device,
                        objective=objective)


def _cached_decision(model, spec, precision, device, objective) -> tuple[Decision | None, Path | None]:
    """A stored decision still valid for the versions of the backends it measured (asked of those only)."""
    from .compile import safe_availability
    from .ranking import Ranked

    decisions = DecisionCache()
    key = _key(model, spec, precision, device, objective)
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
    decisions = DecisionCache()
    key = _key(model, spec, precision, device, str(obj))
    versions = _versions(ranking)

    if use_cache:
        decision = decisions.get(key, versions)
        if decision is not None and set(ranking.names) <= set(decision.versions):
            engine = None
            try:
                if keep_winner:
                    engine = _compile_named(decision.winner, model, examples, spec, tree, device=device,
                                            precision=precision, calibration=calibration, options=options,
                                            cache=cache, gate=gate)
            except Exception as exc:  # noqa: BLE001 - the stored winner no longer compiles: measure afresh
                selection.notes.append(f"the stored decision's winner {decision.winner} failed now ({exc}); "
                                       "measured again")
            else:
                _from_decision(selection, decision, decisions.path(key))
                selection.elapsed_s = time.perf_counter() - started
                return selection, engine

    kept = ranking.names
    per_candidate = (budget_s / len(kept)) if budget_s else DEFAULT_BUDGET_PER_CANDIDATE_S
    limit = float(timeout_s or DEFAULT_TIMEOUT_S)
    bar = Progress(len(kept), enabled=progress)
    workdir = Path(tempfile.mkdtemp(prefix="motorpool-fastest-"))
    runs = _Runs(model, examples, spec, tree, workdir, device=device, precision=precision, calibration=calibration,
                 options=options, objective=obj, budget_s=per_candidate, timeout_s=limit, progress=bar,
                 cache=cache, gate=gate)
    try:
        for name in kept:
            outcome = runs.run(name, isolate)
            if isinstance(outcome, Dropped):
                selection.dropped.append(outcome)
                bar.done(f"{outcome.status}: {outcome.reason[:100]}")
            else:
                selection.ranking.append(outcome)
                bar.done(f"{obj.describe(outcome.figures)}")
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
        if selection.ranking:
            decision = Decision(key, selection.winner, str(obj),
                                ranking=[{"backend": m.backend, "score": m.score, "device": m.device,
                                          "figures": m.figures, "compile_time_s": m.compile_time_s,
                                          "verification": m.verification, "runoff": m.runoff}
                                         for m in selection.ranking],
                                dropped=[asdict(d) for d in selection.dropped],
                                versions={n: versions[n] for n in kept}, hardware=hardware.fingerprint(),
                                precision=precision, device=device)
            selection.decision_path = str(decisions.put(decision))
    finally:
        runs.cleanup()
    selection.elapsed_s = time.perf_counter() - started
    if not selection.ranking:
        raise CompileError("no candidate backend compiled and verified: " +
                           "; ".join(f"{d.backend}: {d.reason}" for d in selection.dropped),
                           reasons={d.backend: d.reason for d in selection.dropped})
    return selection, engine


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


def _compile_named(name, model, examples, spec, tree, *, device, precision, calibration, options, cache=None,
                   gate=None) -> Engine:
    from .compile import _compile_one

    return _compile_one(get_registry().get(name), model, examples, spec, tree, device=device, precision=precision,
                        calibration=calibration, options=dict(options), do_verify=True, cache=cache, gate=gate)


def _runoff(selection: Selection, runs: "_Runs", obj: Objective, per_candidate: float) -> None:
    """Time the candidates within RUNOFF_MARGIN of the best side by side, and re-order them by that."""
    if len(selection.ranking) < 2:
        return
    best = selection.ranking[0].score
    close = [m for m in selection.ranking if _within(m.score, best)][:RUNOFF_MAX]
    if len(close) < 2:
        return
    engines = {}
    for m in close:
        engine = runs.engine_for(m.backend)
        if engine is not None:
            engines[m.backend] = engine
    if len(engines) < 2:
        return
    inputs, batch = timing_inputs(next(iter(engines.values())).input_spec.with_device("cpu"), obj)
    calls = {}
    for name, engine in engines.items():
        dev_inputs = [x.to(engine.input_spec.device) for x in inputs]
        calls[name] = (lambda e, xs: (lambda: e(*xs)))(engine, dev_inputs)
    runs.progress.note(f"run-off between {', '.join(calls)}")
    figures = measure_interleaved(calls, budget_s=per_candidate * len(calls) / 2, batch=batch,
                                  device=next(iter(engines.values())).device)
    for m in close:
        if m.backend in figures:
            m.runoff = figures[m.backend]
    contenders = [m for m in selection.ranking if m.runoff]
    others = [m for m in selection.ranking if not m.runoff]
    contenders.sort(key=lambda m: obj.score(m.runoff))
    selection.ranking = contenders + others
    selection.notes.append(f"run-off (side by side, {obj}) between {', '.join(calls)}: " + ", ".join(
        f"{m.backend} {obj.describe(m.runoff)}" for m in contenders))


def _within(score: float, best: float) -> bool:
    # scores are ms (positive) or minus items/s (negative): compare magnitudes
    a, b = abs(score), abs(best)
    return abs(a - b) <= RUNOFF_MARGIN * max(a, b)


class _Runs:
    """Runs candidates (in a child or in this process) and keeps what is needed to hand back the winner."""

    def __init__(self, model, examples, spec, tree, workdir: Path, *, device, precision, calibration, options,
                 objective: Objective, budget_s: float, timeout_s: float, progress: Progress, cache=None,
                 gate=None):
        self.model, self.examples, self.spec, self.tree = model, examples, spec, tree
        self.workdir = workdir
        self.device, self.precision, self.calibration, self.options = device, precision, calibration, options
        self.objective, self.budget_s, self.timeout_s = objective, budget_s, timeout_s
        self.progress = progress
        self.cache, self.gate = cache, gate
        self.notes: list[str] = []
        self.in_process: dict[str, Engine] = {}
        self.artifacts: dict[str, Path] = {}
        self.loaded: dict[str, Engine] = {}
        self._payload: dict[str, Any] | None = None
        self._payload_problem: str | None = None
        self._keep_dirs: set[Path] = set()

    # -- running one candidate --------------------------------------------------------------------

    def run(self, name: str, isolate: bool | str) -> Measured | Dropped:
        from .isolate import class_path

        backend = get_registry().get(name)
        child = isolate is True or (isolate == "auto" and backend.capabilities.compile_cost in ISOLATED_COSTS)
        if child:
            why_not = None
            if class_path(type(backend)) is None:
                why_not = f"its class {type(backend).__qualname__} cannot be imported by a child process"
            elif self._ensure_payload() is None:
                why_not = self._payload_problem
            if why_not:
                self.notes.append(f"{name} ran in this process: {why_not}")
                child = False
        self.progress.candidate(name, "child process" if child else "in process")
        return self._run_child(name, backend) if child else self._run_here(name, backend)

    def _run_here(self, name, backend) -> Measured | Dropped:
        from .isolate import evaluate, failure

        def work():
            return evaluate(backend, self.model, self.examples, self.spec, self.tree, device=self.device,
                            precision=self.precision, calibration=self.calibration, options=self.options,
                            objective=self.objective, budget_s=self.budget_s, cache=self.cache, gate=self.gate,
                            emit=self.progress.stage)

        finished, value, exc = _run_in_thread(work, self.timeout_s)
        if not finished:
            return Dropped(name, "rejected", f"hung: no result within the {self.timeout_s:g} s limit per candidate "
                                             "(it ran in this process; its thread was abandoned)")
        if exc is not None:
            r = failure(exc)
            return Dropped(name, r["status"], r["reason"])
        engine, result = value
        self.in_process[name] = engine
        return self._measured(result, isolated=False)

    def _run_child(self, name, backend) -> Measured | Dropped:
        from .isolate import class_path, run_in_child

        payload = self._payload
        assert payload is not None
        save_dir = self.workdir / name / "engine"
        job = dict(payload["job"], backend=name, backend_class=class_path(type(backend)), save_dir=str(save_dir))
        result = run_in_child(job, self.workdir / name, timeout_s=self.timeout_s,
                              on_event=lambda e: self.progress.stage(e.get("stage", "")))
        if not result.get("ok"):
            return Dropped(name, result.get("status", "rejected"), result.get("reason", "failed"))
        if result.get("artifact"):
            self.artifacts[name] = Path(result["artifact"])
        elif result.get("save_error"):
            self.notes.append(f"{name}'s engine could not be saved in the child ({result['save_error']}); "
                              "it is compiled again here if it wins")
        return self._measured(result, isolated=True)

    def _measured(self, result: dict, *, isolated: bool) -> Measured:
        return Measured(result["backend"], self.objective.score(result["timing"]), result["device"],
                        result["timing"], result.get("compile_time_s"), result.get("verification"),
                        isolated=isolated)

    def _ensure_payload(self) -> dict[str, Any] | None:
        """Write, once, what a child needs to re-create the model; None (and why) when it cannot."""
        if self._payload is not None or self._payload_problem is not None:
            return self._payload
        from .isolate import model_importable
        from .torchutil import export_program

        calibration = list(self.calibration) if self.calibration is not None else None
        self.calibration = calibration  # an iterator is consumed once: keep the list for later runs
        job: dict[str, Any] = {"sys_path": list(_sys_path()), "spec": self.spec.to_dict(), "device": self.device,
                               "precision": self.precision, "objective": str(self.objective),
                               "budget_s": self.budget_s, "payload": str(self.workdir / "payload.pt"),
                               "cache": self.cache}
        problem = model_importable(self.model)
        data: dict[str, Any] = {"examples": list(self.examples), "calibration": calibration,
                                "options": self.options, "gate": self.gate}
        try:
            if problem is None:
                data["model"] = self.model
                torch.save(data, job["payload"])
                job["model_format"] = "pickle"
            else:
                program = export_program(self.model, self.spec, device="cpu")
                job["model_file"] = str(self.workdir / "model.pt2")
                torch.export.save(program, job["model_file"])
                torch.save(data, job["payload"])
                job["model_format"] = "export"
                self.notes.append(f"the model's class {problem} cannot be imported by a child process; "
                                  "children compiled its torch.export capture, and the winner was verified "
                                  "against the model itself")
        except Exception as exc:  # noqa: BLE001 - neither way works: candidates run in this process
            self._payload_problem = (f"the model cannot be re-created in a child process "
                                     f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            return None
        self._payload = {"job": job}
        return self._payload

    # -- handing back engines -------------------------------------------------------------------------

    def engine_for(self, name: str) -> Engine | None:
        """An engine for ``name`` in this process: the one compiled here, or its artifact loaded."""
        if name in self.in_process:
            return self.in_process[name]
        if name in self.loaded:
            return self.loaded[name]
        path = self.artifacts.get(name)
        if path is None:
            return None
        from .compile import load

        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                engine = load(path)
        except Exception as exc:  # noqa: BLE001 - then it is compiled again if it wins
            self.notes.append(f"{name}'s saved engine did not load here ({exc}); compiled again")
            return None
        self.loaded[name] = engine
        return engine

    def winner_engine(self, selection: Selection) -> Engine:
        """The winner's engine, verified here against the caller's own model."""
        from .compile import _engine_runner, _reference_runner, verification_cases
        from .verify import verify

        winner = selection.ranking[0]
        engine = self.engine_for(winner.backend)
        if engine is None:
            engine = _compile_named(winner.backend, self.model, self.examples, self.spec, self.tree,
                                    device=self.device, precision=self.precision, calibration=self.calibration,
                                    options=self.options, cache=self.cache, gate=self.gate)
        elif winner.backend not in self.in_process:
            # loaded from the child's artifact: check it against the model itself, not the child's copy
            engine.report.verification = verify(_reference_runner(self.model), _engine_runner(engine),
                                                verification_cases(self.spec, self.examples), self.precision,
                                                backend=winner.backend)
            engine.report.compile_time_s = winner.compile_time_s
            engine.manifest = None
            # the runner may read its artifact again (when saved): the work dir lives as long as the engine
            self._keep_dirs.add(self.artifacts[winner.backend].parent)
            weakref.finalize(engine, shutil.rmtree, str(self.workdir), ignore_errors=True)
        return engine

    def cleanup(self) -> None:
        self.in_process.clear()
        self.loaded.clear()
        if not self._keep_dirs:
            shutil.rmtree(self.workdir, ignore_errors=True)
            return
        for p in self.workdir.iterdir():  # the winner's engine owns its directory now; drop the rest
            if p not in self._keep_dirs:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _run_in_thread(fn, timeout_s):
    from .isolate import run_in_thread

    return run_in_thread(fn, timeout_s)


def _sys_path() -> list[str]:
    import sys

    return [p for p in sys.path if p]


__all__ = ["select", "Selection", "Measured", "Dropped", "compile_fastest", "auto_candidates"]
