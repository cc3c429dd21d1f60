"""Opening a saved engine for serving: as ``motorpool.load`` does, optionally with its runtime's threads set
(the server's ``--threads``, a Ray replica's ``num_cpus``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..engine.engine import Engine
from ..engine.manifest import read_manifest
from ..engine.saved import open_saved
from ..plugin.registry import get_registry
from ..pipeline.stored import PENDING, verify_stored
from ..pipeline.threads import engine_threads


def open_engine(path: str | Path, options: dict | None = None, *, trust_code: bool = False) -> Engine:
    """A saved engine, opened as ``motorpool.load`` opens it (checksums; an exported artifact that could not be
    verified where it was built is verified here). Its quality gate is not re-checked: ``motorpool.load(path,
    verify=True)`` does that, and a server should load what was checked before it was deployed. A code format
    (TorchScript, ...) needs ``trust_code=True``, as in ``motorpool.load`` (SECURITY.md)."""
    engine = open_saved(path, options=options, stacklevel=3, trust_code=trust_code)
    manifest = engine.manifest or {}
    if (manifest.get("verification") or {}).get("status") == PENDING:
        engine.report.verification = verify_stored(engine, Path(path), manifest)
    return engine


def load_engine(path: str | Path, threads: int | None = None, *, trust_code: bool = False) -> Engine:
    """The saved engine at ``path`` (:func:`open_engine`), with its threads set to ``threads`` when given: torch's
    (``torch.set_num_threads``, for the torch-based backends) and, for a backend that takes the load-time
    option ``num_threads`` (ONNX Runtime, OpenVINO), its runtime's own pool."""
    if threads is None:
        return open_engine(path, trust_code=trust_code)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads: expected a positive int, got {threads!r}")
    torch.set_num_threads(threads)
    backend = get_registry().get(read_manifest(Path(path))["backend"])
    option = backend.declared_options().get("num_threads")
    return open_engine(path, {"num_threads": threads} if option is not None and option.load else None,
                       trust_code=trust_code)


__all__ = ["open_engine", "load_engine", "engine_threads"]
