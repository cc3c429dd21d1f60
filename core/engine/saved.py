"""Opening a directory that ``Engine.save`` wrote: manifest and checksums, the backend's own ``load``, the Engine.

This is the part of ``motorpool.load`` that needs nothing above the engine layer; the artifact cache opens its
entries through it, and the front door adds the checks that need the pipeline (stored verification of an
exported artifact) and the techniques (the quality gate).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch.utils._pytree as pytree

from ..plugin.contract import CompileOptions, check_options
from ..plugin.errors import ArtifactError, BackendUnavailable, MotorpoolError
from ..plugin.helpers import host_device
from ..plugin.registry import get_registry, safe_availability
from ..plugin.spec import InputSpec
from .engine import Engine, check_loadable
from .manifest import ARTIFACT_DIR, read_manifest
from .report import Report


def load_options(b, stored: dict, path: Path, given: dict | None = None) -> dict:
    """The options a backend is given at load: those of the manifest's it declares with ``Option.load``, then
    the caller's (``given``, checked against the same declarations). The manifest's other options shaped the
    compile and are kept for the record; a manifest cannot choose, say, where a runtime writes its cache. A
    key the backend does not declare at all is warned about."""
    declared = b.declared_options()
    unknown = sorted(k for k in stored if k not in declared)
    if unknown:
        warnings.warn(f"{path}: the manifest's options {unknown} are not options of {b.name}; ignored",
                      stacklevel=3)
    at_load = {k: o for k, o in declared.items() if o.load}
    check_options(given or {}, at_load, what=f"backend {b.name!r} when loading")
    return {**{k: v for k, v in stored.items() if k in at_load}, **(given or {})}


def open_saved(path: str | Path, *, strict: bool = False, device: str | None = None, stacklevel: int = 2,
               trust_code: bool = False, options: dict | None = None) -> Engine:
    """The engine saved at ``path``. Reads no pickle; checks every checksum and every field's type. ``options``
    are load-time options the backend declares (``Option.load``: threads, for instance).

    Differences between where it was made and here are a warning, or with ``strict=True`` an
    :class:`ArtifactError`. An artifact its backend declares to be code (``Backend.code_in_artifact``:
    TorchScript, pickled payloads, native binaries) is refused unless ``trust_code=True`` (SECURITY.md).
    The manifest's options reach the backend's ``load`` only where the backend declares them with
    ``Option.load``; the caller's ``options`` are checked against the same declarations.
    """
    path = Path(path)
    manifest = read_manifest(path)
    b = get_registry().get(manifest["backend"])
    av = safe_availability(b)
    if not av.available:
        raise BackendUnavailable(b.name, av)
    metadata = manifest.get("backend_metadata", {})
    if not trust_code:
        reasons = b.code_in_artifact(path / ARTIFACT_DIR, metadata)
        if reasons:
            raise ArtifactError(f"{path / ARTIFACT_DIR}: {'; '.join(reasons)}. motorpool.load runs no code from a "
                                f"saved engine unless you trust it: motorpool.load({str(path)!r}, "
                                "trust_code=True) (see SECURITY.md)")
    notes = check_loadable(manifest, path)
    if notes:
        if strict:
            raise ArtifactError("; ".join(notes))
        warnings.warn("; ".join(notes), stacklevel=stacklevel + 1)
    try:
        spec = InputSpec.from_dict(manifest["input_spec"])
        tree = pytree.treespec_loads(manifest["output_tree"])
    except Exception as exc:  # noqa: BLE001 - a manifest motorpool did not write, or a corrupt one
        raise ArtifactError(f"{path}: the manifest's input_spec or output_tree cannot be read "
                            f"({type(exc).__name__}: {exc})") from exc
    dev = device or manifest.get("device", spec.device)
    spec = spec.with_device(host_device(dev))
    stored, declared = manifest.get("options") or {}, b.declared_options()
    opts = CompileOptions(device=dev, precision=manifest["precision"], spec=spec,
                          extra=load_options(b, stored, path, options))
    t0 = time.perf_counter()
    try:
        runner = b.load(path / ARTIFACT_DIR, metadata, opts)
    except MotorpoolError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{b.name} could not load {path}: {type(exc).__name__}: {exc}") from exc
    load_time = time.perf_counter() - t0
    report = Report(b.name, runner.device, runner.precision, load_time_s=load_time,
                    compile_time_s=manifest.get("compile_time_s"), verification=manifest.get("verification"),
                    info=dict(getattr(runner, "info", {}) or {}))
    engine = Engine(runner, backend=b.name, spec=spec, output_tree=tree, report=report,
                    backend_version=manifest.get("backend_version"),
                    options={**{k: v for k, v in stored.items() if k in declared}, **(options or {})})
    engine.manifest = manifest
    if manifest.get("gate"):
        report.gate = manifest["gate"].get("result")
    return engine
