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


def open_saved(path: str | Path, *, strict: bool = False, device: str | None = None, options: dict | None = None,
               stacklevel: int = 2) -> Engine:
    """The engine saved at ``path``. Reads no pickle; checks every checksum. ``options`` are load-time options
    the backend declares (``Option.load``: threads, for instance).

    Differences between where it was made and here are a warning, or with ``strict=True`` an
    :class:`ArtifactError`.
    """
    path = Path(path)
    manifest = read_manifest(path)
    b = get_registry().get(manifest["backend"])
    av = safe_availability(b)
    if not av.available:
        raise BackendUnavailable(b.name, av)
    notes = check_loadable(manifest, path)
    if notes:
        if strict:
            raise ArtifactError("; ".join(notes))
        warnings.warn("; ".join(notes), stacklevel=stacklevel + 1)
    spec = InputSpec.from_dict(manifest["input_spec"])
    dev = device or manifest.get("device", spec.device)
    spec = spec.with_device(host_device(dev))
    opts = CompileOptions(device=dev, precision=manifest["precision"], spec=spec,
                          extra=load_options(b, manifest.get("options") or {}, path, options))
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
    if manifest.get("gate"):
        report.gate = manifest["gate"].get("result")
    return engine
