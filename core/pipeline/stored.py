"""Verification data stored inside an artifact, for a machine that checks it later.

``motorpool.export`` of a backend that cannot run where it is built stores a few fresh random inputs of the
spec and eager PyTorch's outputs for them as ``.npy`` files (``allow_pickle=False``) under
``artifact/verification/``; ``motorpool.load`` on a machine that can run the artifact compares them
(:func:`verify_stored`) before returning the engine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.manifest import ARTIFACT_DIR
from ..plugin.errors import VerificationError
from ..plugin.helpers import flatten_outputs, to_numpy
from ..plugin.spec import InputSpec, torch_dtype
from .prepare import verification_cases
from .verify import compare, tolerance_for

#: where the stored verification inputs and reference outputs live, inside ``artifact/``
VERIFICATION_DIR = "verification"
PENDING = "pending_verification"


def store_cases(art: Path, model: torch.nn.Module, spec: InputSpec, examples: tuple) -> dict[str, Any]:
    """Draw fresh random inputs of ``spec``, run eager PyTorch on them, store both as ``.npy``.

    Returns the manifest's description of the stored cases (paths relative to ``artifact/``).
    """
    seed = int.from_bytes(os.urandom(4), "little")
    cases = []
    root = art / VERIFICATION_DIR
    for i, (label, inputs) in enumerate(verification_cases(spec, examples, seed=seed)):
        with torch.inference_mode():
            outputs = flatten_outputs(model(*inputs))
        case_dir = root / f"case{i}"
        case_dir.mkdir(parents=True)
        stored = {"check": label, "inputs": [], "outputs": []}
        for kind, values in (("inputs", inputs), ("outputs", outputs)):
            for j, value in enumerate(values):
                rel = f"{VERIFICATION_DIR}/case{i}/{kind[:-1]}{j}.npy"
                np.save(art / rel, to_numpy(value), allow_pickle=False)
                stored[kind].append(rel)
        cases.append(stored)
    return {"seed": seed, "cases": cases}


def verify_stored(engine, path: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Run the stored inputs through a loaded engine and compare with the stored eager outputs.

    Called by ``motorpool.load`` when the manifest says ``pending_verification``. Returns the figures;
    raises :class:`VerificationError` with them when the engine does not match at the manifest's precision.
    """
    art = Path(path) / ARTIFACT_DIR
    pending = manifest["verification"]
    precision = pending.get("precision", manifest["precision"])
    tol = tolerance_for(precision)
    spec = engine.input_spec
    checks = []
    for case in pending.get("cases", []):
        inputs = [torch.from_numpy(np.load(art / rel, allow_pickle=False)).to(torch_dtype(t.dtype)).to(spec.device)
                  for rel, t in zip(case["inputs"], spec.inputs)]
        reference = [np.load(art / rel, allow_pickle=False) for rel in case["outputs"]]
        figures = compare(reference, flatten_outputs(engine(*inputs)), tol)
        figures["check"] = case["check"]
        checks.append(figures)
    if not checks:
        raise VerificationError(f"{path}: the manifest says {PENDING} but stores no cases to verify",
                                backend=engine.backend)
    result = {
        "status": "verified-on-load", "precision": precision,
        "tolerance": {"atol": tol.atol, "rtol": tol.rtol, "min_cosine": tol.min_cosine},
        "passed": all(c["passed"] for c in checks),
        "max_abs_err": max(c.get("max_abs_err", 0.0) for c in checks),
        "max_rel_err": max(c.get("max_rel_err", 0.0) for c in checks),
        "min_cosine": min(c.get("cosine", 1.0) for c in checks), "checks": checks,
    }
    if not result["passed"]:
        failed = [f"{c['check']}: {c['problem']}" for c in checks if not c["passed"]]
        raise VerificationError(f"{path}: the {engine.backend} artifact does not match the eager outputs stored at "
                                f"export ({precision}): " + "; ".join(failed), backend=engine.backend, figures=result)
    return result
