"""Running one candidate for ``fastest``: compile, verify and time it in this process or in a child process
(:mod:`.isolate`), and hand the winner's engine back to the caller, verified against the caller's model."""

from __future__ import annotations

import shutil
import sys
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch

from ..engine.engine import Engine
from ..engine.saved import open_saved
from ..pipeline.candidate import compile_one, engine_runner, reference_runner
from ..pipeline.prepare import verification_cases
from ..pipeline.threads import with_threads
from ..pipeline.verify import verify
from ..plugin.helpers import export_program, first_line
from ..plugin.registry import get_registry
from .isolate import class_path, evaluate, failure, model_importable, run_in_child, run_in_thread
from .measured import ALONE_IN_CHILD, ALONE_HERE, Dropped, Measured, Selection
from .progress import Progress
from .timing import Objective

#: compile costs run in a child process under isolate="auto"
ISOLATED_COSTS = frozenset({"medium", "high"})


def compile_named(name, model, examples, spec, tree, *, device, precision, calibration, options, cache=None,
                   gate=None) -> Engine:
    """``name``'s engine compiled here, its own thread pool sized as the candidates' were (torch's count)."""
    return compile_one(get_registry().get(name), model, examples, spec, tree, device=device, precision=precision,
                        calibration=calibration, options=with_threads(name, options, torch.get_num_threads()),
                        do_verify=True, cache=cache, gate=gate)


class CandidateRuns:
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
        def work():
            return evaluate(backend, self.model, self.examples, self.spec, self.tree, device=self.device,
                            precision=self.precision, calibration=self.calibration, options=self.options,
                            objective=self.objective, budget_s=self.budget_s, cache=self.cache, gate=self.gate,
                            emit=self.progress.stage)

        finished, value, exc = run_in_thread(work, self.timeout_s)
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
        figures = {**result["timing"], "measurement": ALONE_IN_CHILD if isolated else ALONE_HERE}
        return Measured(result["backend"], self.objective.score(figures), result["device"], figures,
                        result.get("compile_time_s"), result.get("verification"), isolated=isolated)

    def _ensure_payload(self) -> dict[str, Any] | None:
        """Write, once, what a child needs to re-create the model; None (and why) when it cannot."""
        if self._payload is not None or self._payload_problem is not None:
            return self._payload
        calibration = list(self.calibration) if self.calibration is not None else None
        self.calibration = calibration  # an iterator is consumed once: keep the list for later runs
        job: dict[str, Any] = {"sys_path": [p for p in sys.path if p], "spec": self.spec.to_dict(), "device": self.device,
                               "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
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
                                     f"({first_line(exc)})")
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
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                engine = open_saved(path, trust_code=True)  # written by this selection's own child
        except Exception as exc:  # noqa: BLE001 - then it is compiled again if it wins
            self.notes.append(f"{name}'s saved engine did not load here ({exc}); compiled again")
            return None
        self.loaded[name] = engine
        return engine

    def engine_here(self, name: str) -> Engine:
        """:meth:`engine_for`, else ``name`` compiled (and verified) here now; raises when it cannot be."""
        engine = self.engine_for(name)
        if engine is None:
            engine = self.in_process[name] = compile_named(
                name, self.model, self.examples, self.spec, self.tree, device=self.device, precision=self.precision,
                calibration=self.calibration, options=self.options, cache=self.cache, gate=self.gate)
        return engine

    def winner_engine(self, selection: Selection) -> Engine:
        """The winner's engine, verified here against the caller's own model."""
        winner = selection.ranking[0]
        engine = self.engine_here(winner.backend)
        if winner.backend not in self.in_process:
            # loaded from the child's artifact: check it against the model itself, not the child's copy
            engine.report.verification = verify(reference_runner(self.model), engine_runner(engine),
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
