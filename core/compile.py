"""``motorpool.compile`` and ``motorpool.load``: the front door.

Both are thin: ``compile`` hands its arguments to :func:`motorpool.selection.dispatch.compile_model`, which
picks the path for the ``backend`` and ``precision`` asked for; ``load`` opens the saved engine
(:func:`motorpool.engine.engine.saved.open_saved`) and adds the checks a saved engine may carry: the stored
verification of an exported artifact, and the quality gate it was compiled with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .engine.engine import Engine
from .engine.saved import open_saved
from .pipeline.stored import PENDING, verify_stored
from .selection.dispatch import compile_model
from .techniques.gate import Gate, recheck_loaded


def compile(model: torch.nn.Module, example_inputs: Any, *, backend: str | Sequence[str] = "auto",
            device: str = "auto", precision: str = "fp32", dynamic_batch: bool = True,
            dynamic_dims: Mapping[str, Mapping[int, str]] | None = None, input_names: Sequence[str] | None = None,
            verify: bool = True, calibration: Iterable[Any] | None = None,
            options: Mapping[str, Any] | None = None, objective: str = "p50", budget_s: float | None = None,
            candidates: Sequence[str] | None = None, cache: bool | None = None, gate: Gate | None = None) -> Engine:
    """Compile ``model`` for a backend and return an :class:`Engine` called exactly like the model.

    ``backend`` is a name, a list of names to try in order, or ``"auto"``: ranked by what the hardware can do
    (its CPU features, its GPUs) and the model's kind (attention, convolution, recurrent, dense; read from one
    eager run), from the priorities the backends declare; when the top two are a close call, both are
    compiled and timed side by side for ``budget_s`` (default 1 s; 0: never) and the faster is kept (the
    report's ``info["selection"]`` says why and shows the figures). The engine is verified against eager PyTorch on the examples and on fresh random inputs; its report
    says what was tried and why each rejected candidate was dropped. A named backend that fails raises
    with the reason; under ``"auto"`` or a list, a failing candidate is skipped.

    ``backend="fastest"`` compiles, verifies and times every candidate (``candidates`` limits them) and
    keeps the best by ``objective`` (``"p50"``, ``"p99"``, ``"throughput@32"``...; see
    :func:`motorpool.select`) within ``budget_s`` seconds of timing; the decision is cached on disk, and
    ``"auto"`` then tries the measured winner first.

    ``cache``: keep compiled artifacts on disk and load instead of compiling when the model, spec, precision,
    options, backend version and hardware all match (see :mod:`motorpool.engine.engine.artifact_cache`). ``None`` (the
    default) means on unless ``MOTORPOOL_NO_CACHE=1``; ``report.load_time_s`` is set when it loaded.

    ``gate``: a :class:`motorpool.Gate` run after verification; an engine whose metric drops more than the
    gate's budget raises :class:`motorpool.GateError` with the figure (skipped under a list/"auto"). With
    ``precision="auto"`` (which needs a gate) every backend x precision cell is compiled, gated and timed,
    and the fastest that meets the gate is returned (see :mod:`motorpool.selection.precision_search`).
    """
    return compile_model(model, example_inputs, backend=backend, device=device, precision=precision,
                         dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims, input_names=input_names, verify=verify,
                         calibration=calibration, options=options, objective=objective, budget_s=budget_s,
                         candidates=candidates, cache=cache, gate=gate)


def load(path: str | Path, *, strict: bool = False, device: str | None = None, verify: bool = False,
         gate: Gate | None = None, trust_code: bool = False, options: Mapping[str, Any] | None = None) -> Engine:
    """Load an engine that ``Engine.save`` (or ``motorpool.export``) wrote. Reads no pickle; checks every checksum.

    If the artifact was made for other hardware or versions, that is said in a warning (or, with
    ``strict=True``, an :class:`ArtifactError`). An exported artifact that could not be verified where it was
    built is verified here, against the eager outputs stored with it, before it is returned.

    ``verify=True`` re-checks the quality gate the engine was compiled with, on this machine, against the
    reference outputs stored with it (:class:`motorpool.GateError` if it now fails). A custom metric's
    function is not stored: pass the gate again as ``gate=`` (which also re-checks).

    ``trust_code``: a saved engine is data unless you say otherwise (SECURITY.md). Formats that are code
    (TorchScript, TensorRT engines, ``.pt2`` files with pickled payloads, native binaries) are refused with
    an :class:`ArtifactError` naming the file and why; pass ``trust_code=True`` only for engines you built or
    would let run a program on this machine.

    ``options``: what the backend takes at load time (declared with ``Option.load``), e.g. ``{"num_threads": 2}``
    on onnxruntime and openvino; any other key is an :class:`OptionError`. A manifest's own options reach the
    backend only where it declares them as load options.
    """
    engine = open_saved(path, strict=strict, device=device, trust_code=trust_code, options=dict(options or {}))
    manifest = engine.manifest
    if (manifest.get("verification") or {}).get("status") == PENDING:
        engine.report.verification = verify_stored(engine, path, manifest)
    if verify or gate is not None:
        recheck_loaded(engine, Path(path), manifest, gate)
    return engine
