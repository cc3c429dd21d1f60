"""Pruning, model to model: unstructured L1 made permanent, or structured pruning that really shrinks layers.

    >>> result = motorpool.prune(model, 0.5)                                  # half the weights zero
    >>> result = motorpool.prune(model, 0.3, structured=True, example_inputs=(x,))   # 30% of channels gone
    >>> result.model, result.report.params_after, result.report.sparsity

Unstructured pruning zeroes the smallest-magnitude weights of every Linear and Conv layer (``scope``
"global": one threshold over all of them; "layer": ``amount`` of each) and then removes the masks, so the
model holds plain tensors with exact zeros and no forward pre-hooks. Dense kernels do not run it faster; the
gain is in compressed size (and in runtimes with sparse kernels).

Structured pruning removes whole output channels/neurons by L1 norm with the torch-pruning library, which
follows the dependency graph (the BatchNorm after a Conv, the next layer's inputs, residual additions), so
the layers really shrink and every backend runs the smaller model faster. Layers whose outputs are the
model's outputs are never pruned: the model's output shapes stay the same.
"""

from __future__ import annotations

import copy
import io
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..plugin.errors import InputError, UnsupportedError

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SCOPES = ("global", "layer")


@dataclass
class PruneReport:
    """What pruning did: parameter counts, sparsity of the pruned weights, and sizes on disk."""

    structured: bool
    amount: float
    scope: str
    params_before: int
    params_after: int
    nonzero_before: int
    nonzero_after: int
    #: fraction of zeros among the weights of the prunable layers, after pruning
    sparsity: float
    size_before_bytes: int
    size_after_bytes: int
    #: zlib-compressed state dict: where unstructured sparsity pays off
    compressed_before_bytes: int
    compressed_after_bytes: int
    layers: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        kind = "structured" if self.structured else "unstructured"
        return (f"{kind} pruning {self.amount:.0%} ({self.scope}): params {self.params_before:,} -> "
                f"{self.params_after:,}, nonzero {self.nonzero_before:,} -> {self.nonzero_after:,}, "
                f"sparsity {self.sparsity:.1%}, size {self.size_before_bytes / 1e6:.3f} -> "
                f"{self.size_after_bytes / 1e6:.3f} MB (compressed {self.compressed_before_bytes / 1e6:.3f} -> "
                f"{self.compressed_after_bytes / 1e6:.3f} MB)")


@dataclass
class PruneResult:
    model: nn.Module
    report: PruneReport


def _state_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def _prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def _weight_sparsity(model: nn.Module) -> float:
    total = zeros = 0
    for _, m in _prunable(model):
        w = m.weight.detach()
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def _counts(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p.detach() != 0).sum()) for p in params)


def _check_amount(amount: float) -> float:
    if not isinstance(amount, (int, float)) or not 0.0 <= float(amount) < 1.0:
        raise ValueError(f"amount: expected a fraction in [0, 1), got {amount!r}")
    return float(amount)


def _examples(example_inputs: Any) -> tuple:
    if example_inputs is None:
        raise InputError("structured pruning needs example_inputs= (to trace the layer dependency graph)",
                         input="example_inputs", expected="a tensor or tuple of tensors", got=None)
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _output_layers(model: nn.Module, examples: tuple) -> list[nn.Module]:
    """Modules whose output tensor is (one of) the model's outputs: pruning them would change its shapes."""
    produced: dict[int, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda mod, _in, out: produced.__setitem__(id(out), mod))
             for m in model.modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            outputs = pytree.tree_flatten(model(*examples))[0]
    finally:
        for h in hooks:
            h.remove()
    return [produced[id(t)] for t in outputs if id(t) in produced]


def _report(structured: bool, amount: float, scope: str, before: nn.Module, after: nn.Module,
            before_bytes: bytes, steps: int = 1) -> PruneReport:
    p0, nz0 = _counts(before)
    p1, nz1 = _counts(after)
    after_bytes = _state_bytes(after)
    layers = []
    shapes_before = {n: tuple(m.weight.shape) for n, m in _prunable(before)}
    for n, m in _prunable(after):
        w = m.weight.detach()
        layers.append({"layer": n, "shape_before": list(shapes_before.get(n, ())), "shape_after": list(w.shape),
                       "sparsity": float((w == 0).double().mean()) if w.numel() else 0.0})
    return PruneReport(structured, amount, scope, p0, p1, nz0, nz1, _weight_sparsity(after), len(before_bytes),
                       len(after_bytes), len(zlib.compress(before_bytes, 6)), len(zlib.compress(after_bytes, 6)),
                       layers, steps)


# -- unstructured ---------------------------------------------------------------------------------------

def _mask_unstructured(model: nn.Module, amount: float, scope: str) -> None:
    """Apply L1 masks (forward pre-hooks); :func:`_make_permanent` removes them."""
    from torch.nn.utils import prune as tprune

    targets = [(m, "weight") for _, m in _prunable(model)]
    if not targets:
        raise UnsupportedError("unstructured pruning prunes Linear and Conv weights; this model has none")
    if scope == "global":
        tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=amount)
    else:
        for m, name in targets:
            tprune.l1_unstructured(m, name, amount=amount)


def _make_permanent(model: nn.Module) -> None:
    from torch.nn.utils import prune as tprune

    for _, m in _prunable(model):
        if tprune.is_pruned(m) and hasattr(m, "weight_orig"):
            tprune.remove(m, "weight")


# -- structured -----------------------------------------------------------------------------------------

def _structured_pruner(model: nn.Module, examples: tuple, amount: float, scope: str, steps: int,
                       ignored_layers: Sequence[nn.Module] | None):
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise UnsupportedError('structured pruning uses torch-pruning, which is not installed '
                               '(fix: pip install "motorpool[prune]")') from exc
    ignored = list(ignored_layers or []) + _output_layers(model, examples)
    try:
        return tp.pruner.MetaPruner(
            model, examples if len(examples) > 1 else examples[0],
            importance=tp.importance.MagnitudeImportance(p=1), global_pruning=(scope == "global"),
            pruning_ratio=amount, iterative_steps=steps, max_pruning_ratio=0.9, ignored_layers=ignored)
    except Exception as exc:  # noqa: BLE001 - tracing the dependency graph fails on some models
        raise UnsupportedError(f"structured pruning cannot trace this model's layer dependencies: "
                               f"{type(exc).__name__}: {exc}") from exc


def _check_outputs_kept(model: nn.Module, examples: tuple, shapes: list[tuple[int, ...]]) -> None:
    try:
        with torch.no_grad():
            out = pytree.tree_flatten(model(*examples))[0]
    except Exception as exc:  # noqa: BLE001 - e.g. attention whose head count no longer divides the width
        raise UnsupportedError(f"the structurally pruned model no longer runs: {type(exc).__name__}: {exc}; "
                               "pass ignored_layers=[...] for the layers that must keep their width "
                               "(attention projections)") from exc
    now = [tuple(t.shape) for t in out if isinstance(t, torch.Tensor)]
    if now != shapes:
        raise UnsupportedError(f"structured pruning changed the model's output shapes {shapes} -> {now}; pass "
                               "ignored_layers=[...] naming the layers that produce the outputs")


def _output_shapes(model: nn.Module, examples: tuple) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(t.shape) for t in pytree.tree_flatten(model(*examples))[0] if isinstance(t, torch.Tensor)]


# -- public ---------------------------------------------------------------------------------------------

def prune(model: nn.Module, amount: float, *, structured: bool = False, example_inputs: Any = None,
          scope: str = "global", ignored_layers: Sequence[nn.Module] | None = None,
          inplace: bool = False) -> PruneResult:
    """Prune ``amount`` of ``model`` and return the pruned model with a :class:`PruneReport`.

    Unstructured: exactly ``round(amount * n)`` weights zeroed (``scope="global"`` over all Linear/Conv
    weights, ``"layer"`` in each), masks removed. Structured: ``amount`` of each layer's output channels
    (``"layer"``) or by one global ranking (``"global"``) removed with torch-pruning; needs
    ``example_inputs``. The caller's model is left alone unless ``inplace=True``.
    """
    return prune_iteratively(model, amount, steps=1, structured=structured, example_inputs=example_inputs,
                             scope=scope, ignored_layers=ignored_layers, inplace=inplace)


def prune_iteratively(model: nn.Module, amount: float, *, steps: int, fine_tune: Callable[[nn.Module, int], Any]
                      | None = None, structured: bool = False, example_inputs: Any = None, scope: str = "global",
                      ignored_layers: Sequence[nn.Module] | None = None, inplace: bool = False) -> PruneResult:
    """Prune to ``amount`` in ``steps`` equal steps, calling ``fine_tune(model, step)`` after each.

    During unstructured fine-tuning the masks stay on, so pruned weights stay zero while the rest train;
    they are made permanent at the end. ``fine_tune`` may return a model to continue with (or None).
    """
    amount = _check_amount(amount)
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    before = model if not inplace else copy.deepcopy(model)
    before_bytes = _state_bytes(before)
    work = model if inplace else copy.deepcopy(model)
    was_training = work.training
    if structured:
        examples = _examples(example_inputs)
        work.eval()
        shapes = _output_shapes(work, examples)
        pruner = _structured_pruner(work, examples, amount, scope, steps, ignored_layers)
        for step in range(steps):
            try:
                pruner.step()
            except Exception as exc:  # noqa: BLE001
                raise UnsupportedError(f"structured pruning failed at step {step + 1}: {type(exc).__name__}: "
                                       f"{exc}") from exc
            _check_outputs_kept(work, examples, shapes)
            if fine_tune is not None:
                work = fine_tune(work, step) or work
        if amount > 0 and _counts(work)[0] == _counts(before)[0]:
            raise UnsupportedError("structured pruning found no channel it could remove: every prunable layer "
                                   "produces a model output or is tied to one that does")
    else:
        for step in range(steps):
            _make_permanent(work)
            _mask_unstructured(work, amount * (step + 1) / steps, scope)
            if fine_tune is not None and step < steps - 1:
                work = fine_tune(work, step) or work
        if fine_tune is not None:  # the last fine-tune also sees the masks, then they are made permanent
            work = fine_tune(work, steps - 1) or work
        _make_permanent(work)
    work.train(was_training)
    return PruneResult(work, _report(structured, amount, scope, before, work, before_bytes, steps))
