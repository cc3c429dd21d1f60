"""Opening a saved engine for serving: as ``motorpool.load`` does, optionally with its runtime's threads set
(the server's ``--threads``, a Ray replica's ``num_cpus``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..engine.engine import Engine
from ..engine.saved import open_saved
from ..pipeline.stored import PENDING, verify_stored


def open_engine(path: str | Path, *, trust_code: bool = False) -> Engine:
    """A saved engine, opened as ``motorpool.load`` opens it (checksums; an exported artifact that could not be
    verified where it was built is verified here). Its quality gate is not re-checked: ``motorpool.load(path,
    verify=True)`` does that, and a server should load what was checked before it was deployed. A code format
    (TorchScript, ...) needs ``trust_code=True``, as in ``motorpool.load`` (SECURITY.md)."""
    engine = open_saved(path, stacklevel=3, trust_code=trust_code)
    manifest = engine.manifest or {}
    if (manifest.get("verification") or {}).get("status") == PENDING:
        engine.report.verification = verify_stored(engine, Path(path), manifest)
    return engine


def load_engine(path: str | Path, threads: int | None = None, *, trust_code: bool = False) -> Engine:
    """The saved engine at ``path`` (:func:`open_engine`), with its threads set to ``threads`` when given: torch's
    (``torch.set_num_threads``, for the torch-based backends) and the runtime's own pool (ONNX Runtime's
    intra-op threads, OpenVINO's ``INFERENCE_NUM_THREADS``).

    A saved engine's runtime settings live in its manifest, so for ONNX Runtime and OpenVINO the engine is
    loaded from a private, throw-away copy of the folder whose manifest says ``threads`` (artifact files are
    hard-linked where the file system allows, and their checksums are checked as always).
    """
    path = Path(path)
    if threads is None:
        return open_engine(path, trust_code=trust_code)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads: expected a positive int, got {threads!r}")
    torch.set_num_threads(threads)
    manifest = json.loads((path / "manifest.json").read_text())
    meta = manifest.setdefault("backend_metadata", {})
    if manifest.get("backend") == "onnxruntime":
        meta.setdefault("session", {}).update(intra_op_num_threads=threads, inter_op_num_threads=1)
    elif manifest.get("backend") == "openvino":
        meta.setdefault("config", {})["INFERENCE_NUM_THREADS"] = str(threads)
    else:
        return open_engine(path, trust_code=trust_code)

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)

    staged = Path(tempfile.mkdtemp(prefix="motorpool-threads-"))
    try:
        copy = staged / path.name
        shutil.copytree(path, copy, copy_function=link_or_copy)
        (copy / "manifest.json").unlink()  # a link to the original: write a new file, not through it
        (copy / "manifest.json").write_text(json.dumps(manifest))
        return open_engine(copy, trust_code=trust_code)
    finally:  # both runtimes keep private copies of what they loaded
        shutil.rmtree(staged, ignore_errors=True)


def engine_threads(engine: Any) -> int:
    """The threads ``engine``'s runtime runs with, as far as it tells (else torch's)."""
    info = getattr(engine.runner, "info", {}) or {}
    value = (info.get("session", {}).get("intra_op_num_threads")  # ONNX Runtime
             or info.get("config", {}).get("INFERENCE_NUM_THREADS")  # OpenVINO
             or torch.get_num_threads())
    return int(value)


__all__ = ["open_engine", "load_engine", "engine_threads"]
