"""``motorpool.export``: write a backend's artifact for another machine, and check it there on load.

A Core ML package built on a Linux CI box and shipped to a Mac, an ONNX file or OpenVINO IR for another
server: ``export`` writes the same directory ``Engine.save`` writes (``artifact/`` + ``manifest.json``,
checksummed), plus the verification data that lets the target machine check the numerics. That data is a
few fresh random inputs of the spec and eager PyTorch's outputs for them, stored as ``.npy`` files
(``np.save`` with ``allow_pickle=False``) inside ``artifact/verification/``.

- A backend that can run here is compiled, verified here, and saved; the manifest records the figures.
- A backend that can only export here (``Availability.can_export``) writes its artifact through
  :meth:`Backend.export`, which checks what can be checked without running (for Core ML: the program's
  inputs, outputs and op count, recorded in the manifest); the manifest says ``pending_verification``
  and ``motorpool.load`` on a machine that can run it compares the stored outputs before returning.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.utils._pytree as pytree

from .engine.manifest import ARTIFACT_DIR, build_manifest, runtime_versions, write_atomically, write_manifest
from .pipeline.prepare import as_module, prepare
from .pipeline.stored import PENDING, store_cases
from .plugin import hardware
from .plugin.contract import PRECISIONS, Backend, CompileOptions, check_options
from .plugin.errors import BackendUnavailable, UnsupportedError
from .plugin.registry import get_registry, safe_availability
from .plugin.spec import InputSpec, as_example_tuple
from .selection.dispatch import compile_model


def export(model: torch.nn.Module, example_inputs: Any, *, backend: str, path: str | Path, precision: str = "fp32",
           device: str | None = None, dynamic_batch: bool = True,
           dynamic_dims: Mapping[str, Mapping[int, str]] | None = None, input_names: Sequence[str] | None = None,
           calibration: Iterable[Any] | None = None, overwrite: bool = False, **options: Any) -> Path:
    """Write ``backend``'s artifact for ``model`` to the directory ``path``; return ``path``.

    Works for backends that can run here (compiled and verified now) and for backends that can only write
    their artifact here (``list_backends()`` shows ``can_export``; verified by ``motorpool.load`` on the
    machine that runs it). ``device`` is the target device (default: what the backend's ``device="auto"`` means). Other keyword
    arguments are the backend's options. The directory appears whole or not at all.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    model = as_module(model)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    b = get_registry().get(backend)
    check_options(options, b.declared_options(), what=f"backend {b.name!r}")
    av = safe_availability(b)
    if not av.available and not av.can_export:
        raise BackendUnavailable(b.name, av, f"backend {b.name!r} can neither run nor export here: {av.reason}"
                                 + (f" (fix: {av.fix})" if av.fix else ""))
    problem = b.supports(precision=precision, device=None if device in (None, "auto") else device)
    if problem:
        raise UnsupportedError(problem, backend=b.name)
    examples, spec, tree = prepare(model, tuple(x.cpu() for x in as_example_tuple(example_inputs)),
                                   dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims, input_names=input_names)
    try:
        tree_text = pytree.treespec_dumps(tree)
    except Exception as exc:  # noqa: BLE001 - e.g. an output type pytree cannot serialize
        raise UnsupportedError(f"cannot export: the model's output structure ({tree}) cannot be serialized: {exc}",
                               backend=b.name) from exc
    if av.available:
        fill = _runnable(b, model, examples, spec, tree_text, device=device, precision=precision,
                         calibration=calibration, options=options, dynamic_batch=dynamic_batch,
                         dynamic_dims=dynamic_dims, names=spec.names)
    else:
        fill = _export_only(b, av, model, examples, spec, tree_text, device=device, precision=precision,
                            calibration=calibration, options=options)
    path = Path(path)
    write_atomically(path, fill, overwrite=overwrite)
    return path


def _runnable(b: Backend, model, examples, spec, tree_text, *, device, precision, calibration, options,
              dynamic_batch, dynamic_dims, names):
    """Compile and verify here (the backend can run), then save as ``Engine.save`` does, plus the data."""
    engine = compile_model(model, examples, backend=b.name, device=device or "auto", precision=precision,
                            dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims, input_names=names,
                            calibration=calibration, options=options, verify=True)

    def fill(tmp: Path) -> None:
        art = tmp / ARTIFACT_DIR
        art.mkdir()
        metadata = engine.runner.save(art)
        manifest = engine.manifest_for(tree_text, metadata)
        verification = dict(engine.report.verification or {}, status="verified",
                            **store_cases(art, model, engine.input_spec.with_device("cpu"), examples))
        manifest.update(verification=verification, export=_export_note(b, can_run_here=True))
        write_manifest(tmp, manifest)

    return fill


def _export_only(b: Backend, av, model, examples, spec, tree_text, *, device, precision, calibration, options):
    """Write the artifact through ``Backend.export`` where the backend cannot run; verification pending."""
    target = device if device not in (None, "auto") else b.default_device(av)
    opts = CompileOptions(device=target, precision=precision, spec=spec, calibration=calibration,
                          extra=dict(options))

    def fill(tmp: Path) -> None:
        art = tmp / ARTIFACT_DIR
        art.mkdir()
        t0 = time.perf_counter()
        metadata = b.export(model, examples, opts, art)
        export_time = time.perf_counter() - t0
        stored_spec = _static(spec) if metadata.get("static_shapes") else spec
        manifest = build_manifest(
            backend=b.name, backend_version=av.version, versions={**runtime_versions(), **av.versions},
            device=target, precision=precision, input_spec=stored_spec.to_dict(), output_tree=tree_text,
            # no fingerprint: the artifact was built here for another machine, so "made for other hardware"
            # would be noise on the machine it was made for
            hardware={"fingerprint": None, "summary": None, "built_on": hardware.summary()},
            verification={"status": PENDING, "precision": precision,
                          "reason": f"{b.name} cannot run here ({av.reason}); motorpool.load verifies it on a "
                                    "machine that can", **store_cases(art, model, stored_spec, examples)},
            compile_time_s=export_time, options=options, backend_metadata=metadata,
            export=_export_note(b, can_run_here=False))
        write_manifest(tmp, manifest)

    return fill


def _static(spec: InputSpec) -> InputSpec:
    """The spec with every dynamic dimension fixed at the example's size (an artifact that converted only
    with static shapes takes exactly those)."""
    return InputSpec(tuple(replace(t, shape=t.concrete_shape(spec.example_sizes)) for t in spec.inputs),
                     spec.device, {})


def _export_note(b: Backend, *, can_run_here: bool) -> dict[str, Any]:
    return {"built_on": hardware.summary(), "built_on_fingerprint": hardware.fingerprint(),
            "can_run_where_built": can_run_here, "backend": b.name}
