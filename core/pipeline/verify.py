"""Checking that a compiled engine computes what the model computes.

After every compile the engine is run on the examples and on fresh random inputs of its spec (at batch
size 1 and a few others when the batch is dynamic) and compared with eager PyTorch. The tolerance
follows the precision asked for; this table is the one stated in docs/precision.md.

============  ===========================================  ==========================================
precision     floating outputs pass when                   also required
============  ===========================================  ==========================================
fp32          max|a-b| <= 1e-4 + 1e-3 * max|ref|           no NaN/Inf unless ref has them
fp16          max|a-b| <= 1e-2 + 2e-2 * max|ref|           cosine >= 0.999
bf16          max|a-b| <= 5e-2 + 8e-2 * max|ref|           cosine >= 0.995
int8          (no elementwise bound)                       cosine >= 0.98; top-1 agreement >= 90%
============  ===========================================  ==========================================

Cosine is taken per output over all its elements. Top-1 agreement applies to 2-D floating outputs with
several columns (``[batch, classes]``), pooled over every verification case: the share of rows whose
arg-max is the reference's, where a row whose reference top-1 leads the engine's pick by at most 5% of
the row's range counts as a tie (agreeing). Integer and bool outputs must match exactly (fp32) or agree on >= 99% of
elements (fp16/bf16; 95% for int8). NaN never passes: an output with NaN or Inf where the reference is
finite fails. These bounds say the engine computes the same function; whether a reduced precision is
good enough for a task is the quality gate's question (:class:`motorpool.Gate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..plugin.errors import CompileError, VerificationError


@dataclass(frozen=True)
class Tolerance:
    atol: float | None
    rtol: float | None
    min_cosine: float | None = None
    min_int_agreement: float = 1.0
    #: pooled share of [batch, classes] rows whose arg-max matches the reference's
    min_top1: float | None = None


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(atol=1e-2, rtol=2e-2, min_cosine=0.999, min_int_agreement=0.99),
    "bf16": Tolerance(atol=5e-2, rtol=8e-2, min_cosine=0.995, min_int_agreement=0.99),
    "int8": Tolerance(atol=None, rtol=None, min_cosine=0.98, min_int_agreement=0.95, min_top1=0.90),
}


def tolerance_for(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(f"no tolerance for precision {precision!r}; choose one of: "
                         f"{', '.join(TOLERANCES)}") from None


def _to_cpu_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return x.detach().cpu()


def compare(reference: Sequence[Any], actual: Sequence[Any], tol: Tolerance) -> dict[str, Any]:
    """Compare flat output lists. Returns figures; ``passed`` says whether ``tol`` is met."""
    if len(reference) != len(actual):
        return {"passed": False, "problem": f"{len(actual)} outputs, expected {len(reference)}"}
    worst_abs, worst_rel, worst_cos, worst_agree = 0.0, 0.0, 1.0, 1.0
    top1_agree = top1_rows = 0
    problems: list[str] = []
    for i, (r, a) in enumerate(zip(reference, actual)):
        r, a = _to_cpu_tensor(r), _to_cpu_tensor(a)
        if tuple(r.shape) != tuple(a.shape):
            problems.append(f"output {i}: shape {list(a.shape)}, expected {list(r.shape)}")
            continue
        if r.dtype.is_floating_point or r.dtype.is_complex:
            r64, a64 = r.to(torch.float64), a.to(torch.float64)
            ref_finite = torch.isfinite(r64)
            if not bool(ref_finite.all()):
                problems.append(f"output {i}: the reference itself has NaN/Inf")
                continue
            if not bool(torch.isfinite(a64).all()):
                problems.append(f"output {i}: NaN/Inf where the reference is finite")
                continue
            if r64.numel() == 0:
                continue
            abs_err = float((r64 - a64).abs().max())
            scale = float(r64.abs().max())
            worst_abs = max(worst_abs, abs_err)
            worst_rel = max(worst_rel, abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf))
            cos = _cosine(r64, a64)
            if r64.dim() == 2 and r64.shape[1] > 1:
                top1_agree += _top1_agreeing_rows(r64, a64)
                top1_rows += int(r64.shape[0])
            worst_cos = min(worst_cos, cos)
            if tol.atol is not None and abs_err > tol.atol + tol.rtol * scale:
                problems.append(f"output {i}: max abs error {abs_err:.3g} > {tol.atol:g} + {tol.rtol:g}*{scale:.3g}")
            if tol.min_cosine is not None and cos < tol.min_cosine:
                problems.append(f"output {i}: cosine similarity {cos:.6f} < {tol.min_cosine}")
        else:
            agree = float((r == a.to(r.dtype)).float().mean()) if r.numel() else 1.0
            worst_agree = min(worst_agree, agree)
            if agree < tol.min_int_agreement:
                problems.append(f"output {i}: {agree:.2%} of integer elements agree, need "
                                f"{tol.min_int_agreement:.0%}")
    return {"passed": not problems, "max_abs_err": worst_abs, "max_rel_err": worst_rel, "cosine": worst_cos,
            "int_agreement": worst_agree, "top1_agree": top1_agree, "top1_rows": top1_rows,
            "problem": "; ".join(problems) or None}


#: a row whose reference top-1 leads the engine's pick by at most this share of the row's range is a tie
TOP1_TIE = 0.05


def _top1_agreeing_rows(r: torch.Tensor, a: torch.Tensor) -> int:
    """Rows whose arg-max is the reference's, counting near-ties in the reference as agreeing.

    Random-weight models on random inputs often have near-equal top logits; a flip between classes the
    reference itself barely separates says nothing about the engine.
    """
    ref_top, eng_top = r.argmax(1), a.argmax(1)
    margin = r.gather(1, ref_top[:, None])[:, 0] - r.gather(1, eng_top[:, None])[:, 0]
    spread = r.max(1).values - r.min(1).values
    return int(((ref_top == eng_top) | (margin <= TOP1_TIE * spread)).sum())


def _cosine(r: torch.Tensor, a: torch.Tensor) -> float:
    r, a = r.flatten(), a.flatten()
    nr, na = float(r.norm()), float(a.norm())
    if nr == 0 and na == 0:
        return 1.0
    if nr == 0 or na == 0:
        return 0.0
    return float(torch.dot(r, a) / (nr * na))


#: a verification's headline figures, the ones a report row carries
SUMMARY_KEYS = ("passed", "min_cosine", "max_abs_err", "max_rel_err", "top1_agreement")


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a :func:`verify` result, for a report row; the per-check list stays on the
    engine's own report (or the error's figures)."""
    return {k: result.get(k) for k in SUMMARY_KEYS}


def verify(reference: Callable[[list[torch.Tensor]], list[Any]], candidate: Callable[[list[Any]], list[Any]],
           cases: Sequence[tuple[str, list[torch.Tensor]]], precision: str, *, backend: str = "") -> dict[str, Any]:
    """Run every case through both; raise :class:`VerificationError` with the figures if any fails."""
    tol = tolerance_for(precision)
    checks = []
    for label, inputs in cases:
        try:
            expected = reference(inputs)
        except Exception as exc:  # the spec promises inputs the model itself cannot take
            raise CompileError(
                f"the model itself fails on {label} inputs drawn from its spec "
                f"({type(exc).__name__}: {exc}); if a dimension is not really dynamic, say so "
                f"(dynamic_batch=False or dynamic_dims)", backend=backend) from exc
        try:
            got = candidate(inputs)
        except Exception as exc:  # noqa: BLE001 - an engine that cannot run a valid input fails the check
            figures = {"passed": False, "problem": f"the engine raised {type(exc).__name__}: {exc}"}
        else:
            figures = compare(expected, got, tol)
        figures["check"] = label
        checks.append(figures)
    rows = sum(c.get("top1_rows", 0) for c in checks)
    top1 = sum(c.get("top1_agree", 0) for c in checks) / rows if rows else None
    top1_ok = tol.min_top1 is None or top1 is None or top1 >= tol.min_top1
    result = {
        "precision": precision,
        "tolerance": {"atol": tol.atol, "rtol": tol.rtol, "min_cosine": tol.min_cosine, "min_top1": tol.min_top1},
        "passed": all(c["passed"] for c in checks) and top1_ok,
        "top1_agreement": top1,
        "max_abs_err": max(c.get("max_abs_err", 0.0) for c in checks),
        "max_rel_err": max(c.get("max_rel_err", 0.0) for c in checks),
        "min_cosine": min(c.get("cosine", 1.0) for c in checks),
        "checks": checks,
    }
    if not result["passed"]:
        failed = [f"{c['check']}: {c['problem']}" for c in checks if not c["passed"]]
        if not top1_ok:
            failed.append(f"top-1 agreement {top1:.1%} over {rows} rows < {tol.min_top1:.0%}")
        raise VerificationError(f"{backend or 'engine'} does not match eager PyTorch at {precision}: "
                                + "; ".join(failed), backend=backend, figures=result)
    return result
