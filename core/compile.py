"""``motorpool.compile``, ``motorpool.load`` and ``motorpool.list_backends``: the front door."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.utils._pytree as pytree

from . import artifact_cache
from .backend import PRECISIONS, Availability, Backend, CompileOptions
from .engine import Engine, check_loadable
from .errors import ArtifactError, BackendUnavailable, CompileError, MotorpoolError, UnsupportedError
from .manifest import ARTIFACT_DIR, read_manifest
from .registry import get_registry
from .report import Candidate, Report
from .spec import InputSpec, as_example_tuple, input_names
from .torchutil import flatten_outputs, host_device
from .verify import verify

#: batch sizes drawn for verification beside the example's own, when the batch is dynamic
VERIFY_BATCH_SIZES = (1, 3)


@dataclass(frozen=True)
class BackendInfo:
    """One row of :func:`list_backends`."""

    name: str
    available: bool
    status: str
    reason: str
    fix: str | None
    version: str | None
    devices: tuple[str, ...]
    can_export: bool
    provider: str
    capabilities: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, devices=list(self.devices))


def list_backends() -> list[BackendInfo]:
    """Every registered backend, available or not, with why not and how to fix it."""
    reg = get_registry()
    rows = []
    for name in reg.names():
        backend = reg.get(name)
        av = safe_availability(backend)
        rows.append(BackendInfo(name, av.available, av.status.value, av.reason, av.fix, av.version, av.devices,
                                av.can_export, reg.provider(name), backend.capabilities.to_dict()))
    return rows


def safe_availability(backend: Backend) -> Availability:
    """``backend.availability()``, with a misbehaving plugin's exception turned into an answer."""
    try:
        av = backend.availability()
        if not isinstance(av, Availability):
            raise TypeError(f"availability() returned {type(av).__name__}, expected motorpool.Availability")
        return av
    except Exception as exc:  # noqa: BLE001 - the contract says never raise; hold plugins to it here
        return Availability.import_failed(backend.name, exc, fix="report this to the backend's authors")


def _candidates(backend: str | Sequence[str], precision: str, *, spec: InputSpec | None = None,
                device: str = "auto", model: torch.nn.Module | None = None, objective: str = "p50",
                candidates: Sequence[str] | None = None) -> tuple[list[str], bool, list[Candidate], dict]:
    """The backend names to try, in order; whether the user named exactly one; the backends "auto" dropped
    (with reasons); and how the order was made (for the report)."""
    reg = get_registry()
    if isinstance(backend, str) and backend not in ("auto", "fastest"):
        reg.get(backend)  # an unknown name lists the valid ones
        return [backend], True, [], {}
    if isinstance(backend, str):  # "auto": declared ranking, a measured decision first (motorpool.select)
        from .select import auto_candidates

        order, skipped, note = auto_candidates(precision, spec=spec, device=device, model=model,
                                               objective=objective, names=candidates)
        return order, False, skipped, note
    names = list(backend)
    if not names:
        raise ValueError("backend: an empty list names no backend to try")
    for n in names:
        reg.get(n)
    return names, False, [], {}


def rank_auto(precision: str) -> list[str]:
    """Available backends ranked for this hardware by their declared priority (no timing)."""
    from .ranking import rank

    return rank(precision).names


def _resolve_device(backend: Backend, av: Availability, device: str) -> str:
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


def verification_cases(spec: InputSpec, examples: Sequence[torch.Tensor], *, seed: int = 0
                       ) -> list[tuple[str, list[torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    cases = [("examples", list(examples)), ("random", spec.random_inputs(generator=gen))]
    if spec.has_dynamic_batch:
        for b in VERIFY_BATCH_SIZES:
            if b != spec.example_sizes.get("batch"):
                cases.append((f"random batch={b}", spec.random_inputs(generator=gen, sizes={"batch": b})))
    return cases


def _cases(spec: InputSpec, examples, precision: str, calibration) -> list[tuple[str, list[torch.Tensor]]]:
    """Random inputs of the spec, except for calibrated int8: the calibration data's range (motorpool.quantize)."""
    if precision == "int8" and calibration is not None:
        from .quantize import calibrated_cases

        return calibrated_cases(spec, examples, calibration)
    return verification_cases(spec, examples)


def _reference_runner(model: torch.nn.Module):
    def run(inputs: list[torch.Tensor]) -> list[Any]:
        with torch.inference_mode():
            return flatten_outputs(model(*inputs))
    return run


def _engine_runner(engine: Engine):
    def run(inputs: list[torch.Tensor]) -> list[Any]:
        return flatten_outputs(engine(*[x.to(engine.input_spec.device) for x in inputs]))
    return run


def compile(model: torch.nn.Module, example_inputs: Any, *, backend: str | Sequence[str] = "auto",
            device: str = "auto", precision: str = "fp32", dynamic_batch: bool = True,
            dynamic_dims: Mapping[str, Mapping[int, str]] | None = None, input_names: Sequence[str] | None = None,
            verify: bool = True, calibration: Iterable[Any] | None = None,
            options: Mapping[str, Any] | None = None, objective: str = "p50", budget_s: float | None = None,
            candidates: Sequence[str] | None = None, cache: bool | None = None, gate: Any = None) -> Engine:
    """Compile ``model`` for a backend and return an :class:`Engine` called exactly like the model.

    ``backend`` is a name, a list of names to try in order, or ``"auto"`` (ranked by the hardware present).
    The engine is verified against eager PyTorch on the examples and on fresh random inputs; its report
    says what was tried and why each rejected candidate was dropped. A named backend that fails raises
    with the reason; under ``"auto"`` or a list, a failing candidate is skipped.

    ``backend="fastest"`` compiles, verifies and times every candidate (``candidates`` limits them) and
    keeps the best by ``objective`` (``"p50"``, ``"p99"``, ``"throughput@32"``...; see
    :func:`motorpool.select`) within ``budget_s`` seconds of timing; the decision is cached on disk, and
    ``"auto"`` then tries the measured winner first.

    ``cache``: keep compiled artifacts on disk and load instead of compiling when the model, spec, precision,
    options, backend version and hardware all match (see :mod:`motorpool.artifact_cache`). ``None`` (the
    default) means on unless ``MOTORPOOL_NO_CACHE=1``; ``report.load_time_s`` is set when it loaded.

    ``gate``: a :class:`motorpool.Gate` run after verification; an engine whose metric drops more than the
    gate's budget raises :class:`motorpool.GateError` with the figure (skipped under a list/"auto"). With
    ``precision="auto"`` (which needs a gate) every backend x precision cell is compiled, gated and timed,
    and the fastest that meets the gate is returned (see :mod:`motorpool.precision_search`).
    """
    from .quantize import materialize_calibration

    calibration = materialize_calibration(calibration)  # every candidate and the verification see it whole
    if precision == "auto":
        from .precision_search import compile_precision_search

        return compile_precision_search(model, example_inputs, backend=backend, device=device, gate=gate,
                                        dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims,
                                        input_names=input_names, calibration=calibration, options=options,
                                        candidates=candidates, cache=cache)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    examples, spec, tree = prepare(model, example_inputs, dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims,
                                   input_names=input_names)
    if isinstance(backend, str) and backend == "fastest":  # measure every candidate: motorpool.select
        from .select import compile_fastest

        return compile_fastest(model, examples, spec, tree, candidates=candidates, device=device,
                               precision=precision, calibration=calibration, options=options,
                               objective=objective, budget_s=budget_s, cache=cache, gate=gate)
    order, single, dropped, how = _candidates(backend, precision, spec=spec, device=device, model=model,
                                              objective=objective, candidates=candidates)
    reg = get_registry()
    tried: list[Candidate] = []
    last_exc: Exception | None = None
    for name in order:
        b = reg.get(name)
        try:
            engine = _compile_one(b, model, examples, spec, tree, device=device, precision=precision,
                                  calibration=calibration, options=dict(options or {}), do_verify=verify,
                                  cache=cache, gate=gate)
        except (MotorpoolError, Exception) as exc:  # noqa: BLE001 - each candidate's failure is a reason
            if single:
                raise _as_compile_error(exc, name) from exc
            last_exc = exc
            status = "skipped" if isinstance(exc, (BackendUnavailable, UnsupportedError)) else "rejected"
            tried.append(Candidate(name, status, _reason(exc), figures=getattr(exc, "figures", {}) or {}))
            continue
        tried.append(Candidate(name, "chosen", "", device=engine.device, compile_time_s=engine.report.compile_time_s,
                               figures=engine.report.verification or {}))
        engine.report.candidates = tried + dropped
        if how:
            engine.report.info["selection"] = how
        return engine
    reasons = {c.backend: c.reason for c in tried + dropped}
    raise CompileError("no backend could compile this model: " +
                       "; ".join(f"{k}: {v}" for k, v in reasons.items()), reasons=reasons) from last_exc


def prepare(model: torch.nn.Module, example_inputs: Any, *, dynamic_batch: bool = True,
            dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
            input_names: Sequence[str] | None = None) -> tuple[tuple[torch.Tensor, ...], InputSpec, Any]:
    """Steps 1-2 of every compile: the model in eval mode, the examples as a tuple, the input spec, and the
    output structure from one eager run. Raises for a non-module or for outputs that are not tensors."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model.eval()
    examples = as_example_tuple(example_inputs)
    names = list(input_names) if input_names else _names(model, len(examples))
    spec = InputSpec.from_examples(examples, names=names, dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims)
    with torch.inference_mode():
        flat_ref, tree = pytree.tree_flatten(model(*examples))
    if not all(isinstance(t, torch.Tensor) for t in flat_ref):
        kinds = sorted({type(t).__name__ for t in flat_ref if not isinstance(t, torch.Tensor)})
        raise CompileError(f"the model returns non-tensor outputs ({', '.join(kinds)}); motorpool engines "
                           "return tensors in (nested) tuples, lists and dicts")
    return examples, spec, tree


def _names(model: torch.nn.Module, count: int) -> list[str]:
    return input_names(model, count)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MotorpoolError) else f"{type(exc).__name__}: {exc}"


def _as_compile_error(exc: BaseException, name: str) -> BaseException:
    if isinstance(exc, MotorpoolError):
        return exc
    return CompileError(f"{name} failed to compile the model: {type(exc).__name__}: {exc}", backend=name)


def _compile_one(b: Backend, model: torch.nn.Module, examples: tuple, spec: InputSpec, tree, *, device: str,
                 precision: str, calibration, options: dict, do_verify: bool, cache: bool | None = None,
                 gate: Any = None) -> Engine:
    av = safe_availability(b)
    if not av.available:
        raise BackendUnavailable(b.name, av)
    problem = b.supports(precision=precision)
    if problem:
        raise UnsupportedError(problem, backend=b.name)
    dev = _resolve_device(b, av, device)
    dspec = spec.with_device(host_device(dev))  # Core ML's "ane" takes host tensors
    dev_examples = tuple(x.to(dspec.device) for x in examples)
    opts = CompileOptions(device=dev, precision=precision, spec=dspec, calibration=calibration, extra=options)
    # the artifact cache (motorpool.artifact_cache): a matching key loads instead of compiling
    entry = artifact_cache.entry_for(b, av, model, dspec, precision=precision, options=options,
                                     calibration=calibration, enabled_=cache)
    engine = entry.load() if entry is not None else None
    if engine is None:
        t0 = time.perf_counter()
        runner = b.compile(model, dev_examples, opts)
        compile_time = time.perf_counter() - t0
        info = dict(getattr(runner, "info", {}) or {})
        info.setdefault("versions", dict(av.versions))
        report = Report(b.name, runner.device, runner.precision, compile_time_s=compile_time, info=info)
        engine = Engine(runner, backend=b.name, spec=dspec, output_tree=tree, report=report,
                        backend_version=av.version, options=options)
    if do_verify and engine.report.verification is None:
        engine.report.verification = verify(_reference_runner(model), _engine_runner(engine),
                                            _cases(spec, examples, precision, calibration), precision,
                                            backend=b.name)
    if gate is not None:  # the task metric on the user's data: GateError (with the figure) over budget
        from .gate import check_after_compile

        check_after_compile(gate, engine, model, backend=b.name)
    if entry is not None and engine.report.load_time_s is None:
        entry.store(engine)  # only verified engines reach here: a failed verification raised above
    return engine


def load(path: str | Path, *, strict: bool = False, device: str | None = None, verify: bool = False,
         gate: Any = None) -> Engine:
    """Load an engine that ``Engine.save`` wrote. Reads no pickle; checks every checksum.

    If the artifact was made for other hardware or versions, that is said in a warning (or, with
    ``strict=True``, an :class:`ArtifactError`).

    ``verify=True`` re-checks the quality gate the engine was compiled with, on this machine, against the
    reference outputs stored with it (:class:`motorpool.GateError` if it now fails). A custom metric's
    function is not stored: pass the gate again as ``gate=`` (which also re-checks).
    """
    path = Path(path)
    manifest = read_manifest(path)
    reg = get_registry()
    b = reg.get(manifest["backend"])
    av = safe_availability(b)
    if not av.available:
        raise BackendUnavailable(b.name, av)
    notes = check_loadable(manifest, path)
    if notes:
        if strict:
            raise ArtifactError("; ".join(notes))
        warnings.warn("; ".join(notes), stacklevel=2)
    spec = InputSpec.from_dict(manifest["input_spec"])
    dev = device or manifest.get("device", spec.device)
    spec = spec.with_device(host_device(dev))
    opts = CompileOptions(device=dev, precision=manifest["precision"], spec=spec, extra=manifest.get("options", {}))
    t0 = time.perf_counter()
    try:
        runner = b.load(path / ARTIFACT_DIR, manifest.get("backend_metadata", {}), opts)
    except MotorpoolError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{b.name} could not load {path}: {type(exc).__name__}: {exc}") from exc
    load_time = time.perf_counter() - t0
    tree = pytree.treespec_loads(manifest["output_tree"])
    report = Report(b.name, runner.device, runner.precision, load_time_s=load_time,
                    compile_time_s=manifest.get("compile_time_s"), verification=manifest.get("verification"),
                    info=dict(getattr(runner, "info", {}) or {}))
    engine = Engine(runner, backend=b.name, spec=spec, output_tree=tree, report=report,
                    backend_version=manifest.get("backend_version"), options=manifest.get("options", {}))
    engine.manifest = manifest
    if (manifest.get("verification") or {}).get("status") == "pending_verification":
        from .export import verify_stored  # exported where it could not run: check it here, before use

        report.verification = verify_stored(engine, path, manifest)
    if manifest.get("gate"):
        report.gate = manifest["gate"].get("result")
    if verify or gate is not None:
        from .gate import recheck_loaded

        recheck_loaded(engine, path, manifest, gate)
    return engine
