"""Running one ``fastest`` candidate where its failure cannot hurt the caller.

A candidate is compiled, verified against eager PyTorch and timed by :func:`evaluate`. ``fastest`` runs
that either in this process or in a child process (``python -m motorpool.selection.isolate JOBDIR``):

- In a child, a compiler that segfaults, aborts or hangs costs that candidate only: the parent waits with
  a time limit, kills the child's whole process group when it runs over, and reports the signal or the
  last lines of its error output as the candidate's reason. The child saves the compiled engine
  (``Engine.save``) into the job directory and writes its figures as JSON; the parent later loads only
  the winner.
- In this process (for backends whose compile is declared cheap), the candidate runs in a thread with
  the same time limit; a hung thread is abandoned and the candidate dropped.

How the child gets the model: the parent writes one payload per selection. A model whose classes are
importable (defined in a module, not in ``__main__`` or inside a function) is pickled whole with
``torch.save`` and unpickled in the child, which is given the parent's ``sys.path``. Otherwise the model
is captured with ``torch.export`` and the child compiles the exported program's module; the parent
re-verifies the winner against the original model either way. How the child gets the backend: the
backend's class is imported by its ``module:qualname`` and registered in a fresh registry, so a backend
registered by hand (a test's fake, a notebook's) works as well as an installed plugin.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from ..pipeline.candidate import candidate_status, compile_one, reason
from ..pipeline.prepare import as_module
from ..pipeline.threads import engine_threads, use_threads, with_threads
from ..plugin.contract import Backend
from ..plugin.registry import Registry, set_registry
from ..plugin.spec import InputSpec
from .timing import Objective, measure, timing_inputs

EVENT_PREFIX = "@@motorpool-event "
Emit = Callable[[str], None]


# -- the work itself, wherever it runs -----------------------------------------------------------------

def evaluate(backend: Backend, model: torch.nn.Module, examples: tuple, spec: InputSpec, tree, *, device: str,
             precision: str, calibration: Any, options: dict, objective: Objective, budget_s: float,
             cache: bool | None = None, gate: Any = None, emit: Emit = lambda stage: None):
    """Compile, verify (and gate) and time one candidate. Returns ``(engine, result)``; raises on failure.

    Goes through ``compile``'s own path, so the artifact cache serves (and keeps) verified engines only. The
    backend's own thread pool is sized as torch's is here (:func:`with_threads`), as the caller's engine will be.
    """
    emit("compile + verify")
    engine = compile_one(backend, model, examples, spec, tree, device=device, precision=precision,
                          calibration=calibration, options=with_threads(backend.name, options, torch.get_num_threads()),
                          do_verify=True, cache=cache, gate=gate)
    emit("time")
    inputs, batch = timing_inputs(spec, objective)
    inputs = [x.to(engine.input_spec.device) for x in inputs]
    figures = measure(lambda: engine(*inputs), budget_s=budget_s, device=engine.device, batch=batch,
                      objective=objective)
    figures["threads"] = engine_threads(engine)
    result = {
        "ok": True, "backend": backend.name, "device": engine.device, "precision": engine.precision,
        "compile_time_s": engine.report.compile_time_s, "load_time_s": engine.report.load_time_s,
        "timing": figures,
        "verification": summarize_verification(engine.report.verification),
    }
    return engine, result


def summarize_verification(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if not v:
        return None
    return {"passed": v.get("passed"), "checks": len(v.get("checks", [])), "max_abs_err": v.get("max_abs_err"),
            "max_rel_err": v.get("max_rel_err"), "min_cosine": v.get("min_cosine")}


def failure(exc: BaseException) -> dict[str, Any]:
    """A failed candidate as a result: skipped (cannot run here / cannot do this) or rejected (failed)."""
    figures = getattr(exc, "figures", None)
    return {"ok": False, "status": candidate_status(exc), "reason": reason(exc),
            "verification": summarize_verification(figures) if isinstance(figures, dict) else None}


def class_path(cls: type) -> str | None:
    """``module:qualname`` of a class a child can import, or None when it cannot (``__main__``, local)."""
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def import_class(path: str) -> type:
    import importlib

    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def model_importable(model: torch.nn.Module) -> str | None:
    """None when every class in the model can be imported by a child; else the first that cannot."""
    for m in model.modules():
        if class_path(type(m)) is None:
            return f"{type(m).__module__}.{type(m).__qualname__}"
    return None


# -- the parent's side ---------------------------------------------------------------------------------

def run_in_thread(fn: Callable[[], Any], timeout_s: float) -> tuple[bool, Any, BaseException | None]:
    """Run ``fn`` in a daemon thread. Returns (finished, value, exception)."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["exc"] = exc

    t = threading.Thread(target=target, name="motorpool-candidate", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return False, None, None
    return True, box.get("value"), box.get("exc")


def run_in_child(job: dict[str, Any], job_dir: Path, *, timeout_s: float,
                 on_event: Callable[[dict], None] = lambda e: None) -> dict[str, Any]:
    """Run one candidate in a child process. Always returns a result dict, never raises for the child's sake."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps(job))
    stderr_path = job_dir / "stderr.txt"
    last = {"stage": "start"}
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "motorpool.selection.isolate", str(job_dir)], stdout=subprocess.PIPE,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=os.name == "posix")
        reader = threading.Thread(target=_read_output, args=(proc, last, tail, on_event),
                                  name="motorpool-child-output", daemon=True)
        reader.start()
        started = time.perf_counter()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            reader.join(2)
            return {"ok": False, "status": "rejected", "hung": True,
                    "reason": f"hung: no result within the {timeout_s:g} s limit per candidate (it was at "
                              f"{last['stage']!r}); its process was killed"}
        except BaseException:  # Ctrl-C reaches only us (the child has its own session): take it down too
            _kill(proc)
            raise
        reader.join(5)
    elapsed = time.perf_counter() - started
    result_path = job_dir / "result.json"
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text())
            result["child_s"] = elapsed
            return result
        except ValueError as exc:
            return {"ok": False, "status": "rejected", "reason": f"the child wrote an unreadable result: {exc}"}
    return _crashed(rc, last["stage"], _tail(stderr_path) or "\n".join(tail))


def _read_output(proc: subprocess.Popen, last: dict[str, str], tail: collections.deque[str],
                 on_event: Callable[[dict], None]) -> None:
    """Hand the child's event lines to ``on_event`` (noting its latest stage in ``last``); keep the rest in
    ``tail``, for the crash report."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith(EVENT_PREFIX):
            try:
                event = json.loads(line[len(EVENT_PREFIX):])
            except ValueError:
                continue
            last["stage"] = event.get("stage", last["stage"])
            on_event(event)
        else:
            tail.append(line)


def _crashed(rc: int, stage: str, errors: str) -> dict[str, Any]:
    """The result for a child that ended without writing one: how it ended, at which stage, its last output."""
    if rc < 0:
        try:
            how = f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            how = f"killed by signal {-rc}"
    else:
        how = f"exited with code {rc}"
    return {"ok": False, "status": "rejected", "crashed": True,
            "reason": f"crashed: its process {how} during {stage!r} without a result"
                      + (f"; last output: {errors}" if errors else "")}


def _kill(proc: subprocess.Popen) -> None:
    """Kill the child and whatever it started (its own session), then reap it."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, lines: int = 6, chars: int = 800) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])[-chars:]


# -- the child's side ----------------------------------------------------------------------------------

def _emit(stage: str, **extra: Any) -> None:
    print(EVENT_PREFIX + json.dumps({"stage": stage, **extra}), flush=True)


def _child(job_dir: Path) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    for p in reversed(job.get("sys_path", [])):
        if p not in sys.path:
            sys.path.insert(0, p)
    result_path = job_dir / "result.json"
    try:
        result = _child_work(job)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes the candidate's reason
        result = failure(exc)
        result["traceback"] = traceback.format_exc(limit=8)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, result_path)
    return 0


def _child_work(job: dict[str, Any]) -> dict[str, Any]:
    _emit("load")
    if job.get("threads"):  # the caller's pools, not a fresh process's defaults
        use_threads(int(job["threads"]), int(job["interop_threads"]))
    cls = import_class(job["backend_class"])
    reg = Registry(autoload=False)
    reg.register(cls, provider=f"class {job['backend_class']} (fastest's child process)")
    set_registry(reg)
    backend = reg.get(job["backend"])
    payload = torch.load(job["payload"], weights_only=False)  # our own parent's temp file
    if job["model_format"] == "pickle":
        model = payload["model"]
    else:
        model = as_module(torch.export.load(job["model_file"]))
    model.eval()
    examples = tuple(payload["examples"])
    spec = InputSpec.from_dict(job["spec"])
    with torch.inference_mode():
        _, tree = pytree.tree_flatten(model(*examples))
    engine, result = evaluate(backend, model, examples, spec, tree, device=job["device"],
                              precision=job["precision"], calibration=payload.get("calibration"),
                              options=payload.get("options") or {}, objective=Objective.parse(job["objective"]),
                              budget_s=float(job["budget_s"]), cache=job.get("cache"), gate=payload.get("gate"),
                              emit=_emit)
    _emit("save")
    try:
        engine.save(job["save_dir"])
        result["artifact"] = job["save_dir"]
    except Exception as exc:  # noqa: BLE001 - an unsaveable winner is recompiled by the parent
        result["artifact"] = None
        result["save_error"] = failure(exc)["reason"]
    _emit("done")
    return result


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
