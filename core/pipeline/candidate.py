"""One candidate backend, start to finish: availability, device, compile (or a verified artifact-cache hit),
verification against eager PyTorch, the quality gate, and the cache store.

``compile_one`` is what ``compile``, ``fastest``, the precision search and the child processes of
``select`` all run for one backend; the rules for reporting a failed candidate (:func:`reason`,
:func:`candidate_status`) live here too, so every report words them alike.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..engine import artifact_cache
from ..engine.engine import Engine
from ..engine.fingerprint import model_fingerprint
from ..engine.report import Report
from ..plugin.contract import Availability, Backend, CompileOptions, check_options
from ..plugin.errors import BackendUnavailable, CompileError, GateError, MotorpoolError, UnsupportedError
from ..plugin.helpers import flatten_outputs, host_device
from ..plugin.registry import safe_availability
from ..plugin.spec import InputSpec
from .prepare import verification_inputs
from .verify import compare, summary, tolerance_for, verify


def resolve_device(backend: Backend, av: Availability, device: str) -> str:
    """The concrete device ``device`` ("auto", "cuda", "cuda:1", ...) means for this backend here."""
    if device == "auto":
        return backend.default_device(av)
    kind = device.split(":")[0]
    if kind not in backend.capabilities.devices:
        raise UnsupportedError(f"{backend.name} cannot target {device!r}; it targets "
                               f"{', '.join(backend.capabilities.devices)}", backend=backend.name)
    seen = av.devices
    if device not in seen and not (kind == device and any(d.split(":")[0] == kind for d in seen)):
        raise BackendUnavailable(backend.name, av, f"{backend.name} sees no device {device!r} here (it sees "
                                 f"{', '.join(seen) or 'none'}); motorpool does not fall back to another device")
    if device == "cuda":
        return "cuda:0"
    return device


def reference_runner(model: torch.nn.Module) -> Callable[[list[torch.Tensor]], list[Any]]:
    """Eager PyTorch on a list of inputs, flat outputs: the reference every engine is compared with."""
    def run(inputs: list[torch.Tensor]) -> list[Any]:
        with torch.inference_mode():
            return flatten_outputs(model(*inputs))
    return run


def engine_runner(engine: Engine) -> Callable[[list[torch.Tensor]], list[Any]]:
    """The engine on a list of (host) inputs, moved to its device; flat outputs."""
    def run(inputs: list[torch.Tensor]) -> list[Any]:
        return flatten_outputs(engine(*[x.to(engine.input_spec.device) for x in inputs]))
    return run


def reason(exc: BaseException) -> str:
    """A failed candidate's reason as a report shows it."""
    return str(exc) if isinstance(exc, MotorpoolError) else f"{type(exc).__name__}: {exc}"


def candidate_status(exc: BaseException) -> str:
    """``"skipped"`` when the backend could not even try (unavailable, unsupported), else ``"rejected"``."""
    return "skipped" if isinstance(exc, (BackendUnavailable, UnsupportedError)) else "rejected"


def as_compile_error(exc: BaseException, name: str) -> BaseException:
    """A named backend's failure as the error ``compile`` raises: motorpool's own errors pass unchanged."""
    if isinstance(exc, MotorpoolError):
        return exc
    return CompileError(f"{name} failed to compile the model: {type(exc).__name__}: {exc}", backend=name)


def own_options(b: Backend, options: dict) -> dict:
    """The options ``b`` declares, checked (type, choices); under "auto", a list or "fastest" the caller's
    options may hold keys meant for another candidate, which ``b`` never sees."""
    declared = b.declared_options()
    mine = {k: v for k, v in options.items() if k in declared}
    check_options(mine, declared, what=f"backend {b.name!r}")
    return mine


def compile_one(b: Backend, model: torch.nn.Module, examples: tuple, spec: InputSpec, tree, *, device: str,
                precision: str, calibration, options: dict, do_verify: bool, cache: bool | None = None,
                gate: Any = None) -> Engine:
    """Compile ``model`` with backend ``b`` (or load it from the artifact cache), verify it, gate it.

    Raises :class:`BackendUnavailable` / :class:`UnsupportedError` when ``b`` cannot try, and the backend's or
    the verification's error when it fails. ``gate`` is a :class:`motorpool.Gate` (or anything with its
    ``check_compiled`` method).
    """
    av = safe_availability(b)
    if not av.available:
        raise BackendUnavailable(b.name, av)
    problem = b.supports(precision=precision)
    if problem:
        raise UnsupportedError(problem, backend=b.name)
    dev = resolve_device(b, av, device)
    options = own_options(b, options)
    dspec = spec.with_device(host_device(dev))  # Core ML's "ane" takes host tensors
    entry = artifact_cache.entry_for(b, av, model, dspec, precision=precision, options=options,
                                     calibration=calibration, enabled_=cache)
    # The reference outputs come first, before any backend sees the model: a backend that rewrites the module
    # it compiles (in place, as some CPU backends do) cannot move the reference with it.
    cases = verification_inputs(spec, examples, precision, calibration) if do_verify else [("examples", list(examples))]
    references = _references(model, cases)
    engine = entry.load() if entry is not None else None
    if engine is not None:
        problem = _hit_problem(engine, cases[0][1], references[0], precision)
        if problem:
            entry.discard(f"it does not compute what the model computes on the examples ({problem})")
            engine = None
    if engine is None:
        engine = _compile_fresh(b, av, model, examples, dspec, tree, device=dev, precision=precision,
                                calibration=calibration, options=options)
    engine.report.info["model_fingerprint"] = entry.key["model"] if entry is not None else model_fingerprint(model)
    if do_verify and engine.report.verification is None:
        stored = iter(references)
        engine.report.verification = verify(lambda inputs: _replay(next(stored)), engine_runner(engine), cases,
                                            precision, backend=b.name)
    if gate is not None:  # the task metric on the user's data: GateError (with the figure) over budget
        _check_gate(gate, engine, model, b.name)
    if entry is not None and engine.report.load_time_s is None and engine.report.verification is not None:
        entry.store(engine)  # verified engines only: a failed verification raised above, verify=False stores none
    return engine


def _check_gate(gate: Any, engine: Engine, model: torch.nn.Module, backend: str) -> None:
    """The gate's check. A refusal carries the verification's figures beside the gate's, so the report row of
    a candidate that failed its gate still says how close to eager PyTorch it came."""
    try:
        gate.check_compiled(engine, model, backend=backend)
    except GateError as exc:
        if engine.report.verification is not None:
            exc.figures["verification"] = summary(engine.report.verification)
        raise


def _references(model: torch.nn.Module, cases) -> list[Any]:
    """Eager outputs for every case (or the exception the model raised on it, replayed inside ``verify``)."""
    run = reference_runner(model)
    out: list[Any] = []
    for _, inputs in cases:
        try:
            out.append(run(inputs))
        except Exception as exc:  # noqa: BLE001 - verify words the model's own failure
            out.append(exc)
    return out


def _replay(reference: Any) -> Any:
    if isinstance(reference, Exception):
        raise reference
    return reference


def _hit_problem(engine: Engine, inputs: list[torch.Tensor], reference: Any, precision: str) -> str | None:
    """Why a cache hit is not the model's engine (its outputs on the examples differ), or None."""
    if isinstance(reference, Exception):
        return None  # verify reports the model's own failure
    try:
        figures = compare(reference, engine_runner(engine)(inputs), tolerance_for(precision))
    except Exception as exc:  # noqa: BLE001 - an entry that cannot even run is not this model's engine
        return f"it raised {type(exc).__name__}: {exc}"
    return None if figures["passed"] else figures.get("problem", "outputs differ")


def _compile_fresh(b: Backend, av: Availability, model: torch.nn.Module, examples: tuple, dspec: InputSpec, tree, *,
                   device: str, precision: str, calibration, options: dict) -> Engine:
    dev_examples = tuple(x.to(dspec.device) for x in examples)
    opts = CompileOptions(device=device, precision=precision, spec=dspec, calibration=calibration, extra=options)
    t0 = time.perf_counter()
    runner = b.compile(model, dev_examples, opts)
    compile_time = time.perf_counter() - t0
    info = dict(getattr(runner, "info", {}) or {})
    info.setdefault("versions", dict(av.versions))
    report = Report(b.name, runner.device, runner.precision, compile_time_s=compile_time, info=info)
    return Engine(runner, backend=b.name, spec=dspec.with_bounds(runner.dim_bounds), output_tree=tree, report=report,
                  backend_version=av.version, options=options)
