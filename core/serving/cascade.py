"""A confidence cascade: a fast model answers what it is sure of, a bigger one the rest.

    >>> cascade = motorpool.Cascade(student_engine, teacher_engine, confidence="max_softmax", threshold=0.8)
    >>> y = cascade(x)                                  # called like the model; outputs in order
    >>> figures = cascade.calibrate(x_val, target_agreement=0.99)   # picks the threshold
    >>> cascade.fraction_routed

The fast engine runs on the whole batch; each sample whose confidence is below ``threshold`` is run again on
the accurate engine (only those samples, in one batch), and its outputs replace the fast ones in place, so
the result has the fast model's output structure and order. Confidences are normalized to [0, 1]:

- ``"max_softmax"``: the top softmax probability, rescaled from [1/C, 1] to [0, 1];
- ``"margin"``: top-1 minus top-2 softmax probability;
- ``"entropy"``: ``1 - H(p) / log C`` (1: one-hot, 0: uniform);
- a callable taking the logits ``[N, C]`` (a float tensor) and returning ``N`` confidences in [0, 1].

So ``threshold=0`` routes nothing and ``threshold=1`` routes every sample (the fast engine is then skipped).
A Cascade is engine-like: torch tensors in and out, NumPy arrays in give NumPy arrays out, it has the fast
engine's ``input_spec`` and is thread-safe, so it works behind :class:`motorpool.DynamicBatcher`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn

from ..plugin.errors import InputError
from ..plugin.spec import InputSpec


# The built-in measures work in NumPy float64: a batch's logits are small, and torch's intra-op thread pool
# can stall for milliseconds on a machine whose cores a runtime's own spinning threads (ONNX Runtime's) hold.

def _probabilities(logits: torch.Tensor) -> np.ndarray:
    z = logits.detach().cpu().numpy().astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The top softmax probability, rescaled from [1/C, 1] to [0, 1]."""
    classes = logits.shape[-1]
    top = _probabilities(logits).max(axis=-1)
    return torch.from_numpy(np.clip((top - 1.0 / classes) / (1.0 - 1.0 / classes), 0.0, 1.0))


def margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 softmax probability."""
    p = _probabilities(logits)
    top2 = np.partition(p, p.shape[-1] - 2, axis=-1)[:, -2:]
    return torch.from_numpy(np.clip(top2[:, 1] - top2[:, 0], 0.0, 1.0))


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """1 - H(p) / log C: 1 for a one-hot distribution, 0 for a uniform one."""
    p = _probabilities(logits)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)
    return torch.from_numpy(np.clip(1.0 - h / math.log(logits.shape[-1]), 0.0, 1.0))


#: the built-in confidence measures, by name
CONFIDENCES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max_softmax": max_softmax, "margin": margin, "entropy": entropy}


@dataclass
class CascadeCalibration:
    """What :meth:`Cascade.calibrate` found on its held-out data.

    ``target`` is "agreement" (top-1 agreement with the accurate engine) or "accuracy" (against labels);
    ``achieved`` is that figure for the cascade at ``threshold``; ``fast_alone``/``accurate_alone`` are the
    figure with nothing routed and with everything routed. ``agreement`` (with the accurate engine) is given
    in both cases, the ``*_accuracy`` figures only with labels.
    """

    threshold: float
    confidence: str
    target: str
    target_value: float
    achieved: float
    fraction_routed: float
    samples: int
    fast_alone: float
    accurate_alone: float
    agreement: float
    fast_accuracy: float | None = None
    accurate_accuracy: float | None = None
    cascade_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return (f"threshold {self.threshold:.6g} ({self.confidence}): {self.target} {self.achieved:.2%} "
                f"(target {self.target_value:.2%}; fast alone {self.fast_alone:.2%}, accurate alone "
                f"{self.accurate_alone:.2%}), {self.fraction_routed:.1%} of {self.samples} samples routed")


def _inputs(data: Any, what: str) -> tuple[torch.Tensor, ...]:
    items = (data,) if isinstance(data, (torch.Tensor, np.ndarray)) else data
    if not isinstance(items, (tuple, list)) or not items:
        raise InputError(f"{what}: expected a tensor, a NumPy array or a non-empty tuple of them, got "
                         f"{type(data).__name__}", input=what, expected="tensor or tuple of tensors",
                         got=type(data).__name__)
    out = []
    for i, x in enumerate(items):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            got = "a scalar" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{what}[{i}]: expected a torch.Tensor or numpy.ndarray with a batch "
                             f"dimension, got {got}", input=f"{what}[{i}]", expected="[batch, ...]",
                             got=got)
        out.append(x)
    rows = {int(x.shape[0]) for x in out}
    if len(rows) != 1 or rows == {0}:
        raise InputError(f"{what}: expected every input to hold the same, non-zero number of samples, "
                         f"got {[int(x.shape[0]) for x in out]}", input=what,
                         expected="equal non-zero rows", got=sorted(rows))
    return tuple(out)


class Cascade:
    """Run ``fast`` on every sample and ``accurate`` on those ``fast`` is not confident about.

    - ``fast``, ``accurate``: motorpool engines or plain ``nn.Module``s (run in eval and inference mode),
      called with the same inputs, returning the same output structure (a tensor, tuple or dict).
    - ``confidence``: "max_softmax", "margin", "entropy" or a callable (see the module docstring).
    - ``threshold``: in [0, 1]; a sample with confidence below it goes to ``accurate``. 0 routes none,
      1 routes all. :meth:`calibrate` picks one from held-out data.
    - ``output``: which output holds the logits when the models return a tuple (an index) or dict (a key).
    - ``example_inputs``: needed only when neither model is an engine, to give the cascade an
      ``input_spec`` (for the dynamic batcher); the batch dimension is dynamic.

    Counters: ``calls``, ``samples``, ``routed`` and ``fraction_routed``; :meth:`reset_counters` zeroes them.
    """

    def __init__(self, fast: Any, accurate: Any, confidence: str | Callable[[torch.Tensor], Any] = "max_softmax",
                 threshold: float = 0.5, *, output: int | str = 0, example_inputs: Any = None):
        for label, model in (("fast", fast), ("accurate", accurate)):
            if not callable(model):
                raise InputError(f"{label}: expected an engine or nn.Module called like the model, got "
                                 f"{type(model).__name__}", input=label, expected="callable",
                                 got=type(model).__name__)
            if isinstance(model, nn.Module):
                model.eval()
        if isinstance(confidence, str):
            if confidence not in CONFIDENCES:
                raise InputError(f"confidence={confidence!r}: unknown measure. Choose one of: "
                                 f"{', '.join(CONFIDENCES)}, or pass a callable(logits) -> confidences",
                                 input="confidence", expected=list(CONFIDENCES), got=confidence)
            self._measure, self.confidence_name = CONFIDENCES[confidence], confidence
        elif callable(confidence):
            self._measure = confidence
            self.confidence_name = getattr(confidence, "__name__", type(confidence).__name__)
        else:
            raise InputError(f"confidence: expected one of {', '.join(CONFIDENCES)} or a callable, got "
                             f"{type(confidence).__name__}", input="confidence",
                             expected=list(CONFIDENCES), got=type(confidence).__name__)
        self.fast, self.accurate = fast, accurate
        self.output = output
        self.threshold = threshold  # checked by the setter
        self._spec = getattr(fast, "input_spec", None) or getattr(accurate, "input_spec", None)
        self._check_own = self._spec is None
        if self._spec is None and example_inputs is not None:
            self._spec = InputSpec.from_examples(_inputs(example_inputs, "example_inputs"))
        self._lock = threading.Lock()
        self._calls = self._samples = self._routed = 0

    # -- engine-like surface ---------------------------------------------------------------------------

    @property
    def input_spec(self) -> Any:
        if self._spec is None:
            raise AttributeError("this Cascade has no input_spec: neither model is a motorpool engine; pass "
                                 "example_inputs=(x,) to Cascade(...)")
        return self._spec

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise InputError(f"threshold: expected a number in [0, 1] (0 routes nothing, 1 routes "
                             f"everything), got {value!r}", input="threshold", expected="[0, 1]",
                             got=value)
        self._threshold = float(value)

    def __call__(self, *inputs: Any) -> Any:
        if self._check_own and self._spec is not None:
            self._spec.check(inputs)
        as_numpy = bool(inputs) and all(isinstance(x, np.ndarray) for x in inputs)
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
                        for x in inputs)
        rows = int(tensors[0].shape[0]) if tensors and hasattr(tensors[0], "shape") and tensors[0].dim() else 1
        threshold = self._threshold  # one value for the whole batch, even if calibrate runs meanwhile
        if threshold >= 1.0:
            out, routed = self._run(self.accurate, tensors), rows
        else:
            out = self._run(self.fast, tensors)
            mask = self._confidence(out, rows) < threshold
            routed = int(mask.sum())
            if routed:
                index = mask.nonzero().flatten()
                picked = tuple(x[index.to(x.device)] for x in tensors)
                out = _merge(out, self._run(self.accurate, picked), index)
        with self._lock:
            self._calls += 1
            self._samples += rows
            self._routed += routed
        if as_numpy:
            out = pytree.tree_map(lambda v: v.numpy(force=True) if isinstance(v, torch.Tensor) else v, out)
        return out

    def confidences(self, *inputs: Any) -> torch.Tensor:
        """The fast engine's confidence for each sample of ``inputs`` (float64, in [0, 1])."""
        tensors = _inputs(inputs, "inputs")
        return self._confidence(self._run(self.fast, tensors), int(tensors[0].shape[0]))

    # -- counters --------------------------------------------------------------------------------------

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def routed(self) -> int:
        return self._routed

    @property
    def fraction_routed(self) -> float:
        with self._lock:
            return self._routed / self._samples if self._samples else 0.0

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": self._calls, "samples": self._samples, "routed": self._routed,
                    "fraction_routed": self._routed / self._samples if self._samples else 0.0}

    def reset_counters(self) -> None:
        with self._lock:
            self._calls = self._samples = self._routed = 0

    def __repr__(self) -> str:
        return (f"Cascade(confidence={self.confidence_name!r}, threshold={self._threshold:.6g}, "
                f"fraction_routed={self.fraction_routed:.3f} of {self._samples} samples)")

    # -- calibration -----------------------------------------------------------------------------------

    def calibrate(self, data: Any, *, labels: Any = None, target_agreement: float | None = None,
                  target_accuracy: float | None = None, confidence_level: float | None = None,
                  batch_size: int = 256) -> CascadeCalibration:
        """Pick the threshold that routes the fewest samples while meeting the target on ``data``; set it.

        ``data`` is held-out inputs (a tensor or a tuple of them) the models were not trained on. The target
        is ``target_agreement`` (top-1 agreement of the cascade with the accurate engine; the default, 0.99)
        or ``target_accuracy`` (top-1 accuracy against ``labels``). Agreement can always be met (routing
        everything agrees fully); an accuracy the cascade cannot reach on ``data`` raises InputError
        naming the best it reaches. The counters are left alone.

        ``confidence_level`` (e.g. 0.95) makes the choice hold beyond ``data``: the error rate among the
        samples the fast engine keeps is replaced by its one-sided Wilson upper bound at that level, so the
        threshold routes more samples the fewer there are to judge from. None uses the figures as measured.
        """
        target_name, target = _calibration_target(labels, target_agreement, target_accuracy, confidence_level,
                                                  batch_size)
        tensors = _inputs(data, "data")
        rows = int(tensors[0].shape[0])
        truth = None if labels is None else _labels_of(labels, rows)
        conf_t, fast_t, accurate_t = self._top_classes(tensors, rows, batch_size)
        reference = accurate_t if truth is None or target_name == "agreement" else truth.long()
        fast_ok = (fast_t == reference).double()
        accurate_ok = (accurate_t == reference).double()
        threshold, k, score = _pick_threshold(conf_t, fast_ok, accurate_ok, target, target_name, confidence_level)
        self.threshold = threshold
        routed = conf_t < threshold if threshold < 1.0 else torch.ones(rows, dtype=torch.bool)
        return CascadeCalibration(
            threshold=threshold, confidence=self.confidence_name, target=target_name, target_value=float(target),
            achieved=float(score[k]), fraction_routed=float(routed.double().mean()), samples=rows,
            fast_alone=float(score[0]), accurate_alone=float(score[rows]),
            **_calibration_figures(routed, fast_t, accurate_t, truth))

    def _top_classes(self, tensors: tuple[torch.Tensor, ...], rows: int,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample: the fast engine's confidence, its top-1 class and the accurate engine's top-1 class."""
        conf, fast_top, accurate_top = [], [], []
        for start in range(0, rows, batch_size):
            part = tuple(x[start:start + batch_size] for x in tensors)
            n = int(part[0].shape[0])
            fast_out = self._run(self.fast, part)
            conf.append(self._confidence(fast_out, n))
            fast_top.append(self._logits(fast_out, n).argmax(-1).cpu())
            accurate_top.append(self._logits(self._run(self.accurate, part), n).argmax(-1).cpu())
        return torch.cat(conf).cpu(), torch.cat(fast_top), torch.cat(accurate_top)

    # -- internals -------------------------------------------------------------------------------------

    def _run(self, model: Any, inputs: Sequence[Any]) -> Any:
        if isinstance(model, nn.Module):
            with torch.inference_mode():
                return model(*inputs)
        return model(*inputs)

    def _logits(self, out: Any, rows: int) -> torch.Tensor:
        which = self.output
        if isinstance(out, (tuple, list)):
            if not isinstance(which, int) or not -len(out) <= which < len(out):
                raise InputError(f"output={which!r}: the model returns {len(out)} outputs; expected "
                                 f"an index in 0..{len(out) - 1}", input="output",
                                 expected=f"0..{len(out) - 1}", got=which)
            out = out[which]
        elif isinstance(out, dict):
            keys = list(out)
            key = which if which in out else (keys[which] if isinstance(which, int) and -len(keys) <= which
                                              < len(keys) else None)
            if key is None:
                raise InputError(f"output={which!r}: the model returns outputs {keys}; expected one "
                                 "of those keys or an index", input="output", expected=keys, got=which)
            out = out[key]
        if isinstance(out, np.ndarray):
            out = torch.from_numpy(out)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != rows or out.shape[1] < 2 \
                or not out.dtype.is_floating_point:
            got = f"{out.dtype} {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"the fast model's logits: expected a float tensor [{rows}, classes>=2], "
                             f"got {got}", input="output", expected=f"[{rows}, classes]", got=got)
        return out

    def _confidence(self, out: Any, rows: int) -> torch.Tensor:
        logits = self._logits(out, rows)
        conf = self._measure(logits)
        conf = torch.as_tensor(np.asarray(conf) if isinstance(conf, (list, np.ndarray)) else conf)
        if conf.shape != (rows,) or not (conf.dtype.is_floating_point or conf.dtype == torch.bool):
            raise InputError(f"confidence {self.confidence_name!r}: expected {rows} numbers (one per "
                             f"sample), got {conf.dtype} {list(conf.shape)}", input="confidence",
                             expected=[rows], got=list(conf.shape))
        conf = conf.double().cpu()
        if not bool(((conf >= 0) & (conf <= 1)).all()):  # also false for NaN
            bad = conf[~((conf >= 0) & (conf <= 1))][:3].tolist()
            raise InputError(f"confidence {self.confidence_name!r}: expected values in [0, 1], got "
                             f"{bad}", input="confidence", expected="[0, 1]", got=bad)
        return conf



# -- calibration helpers ---------------------------------------------------------------------------------


def _calibration_target(labels: Any, target_agreement: float | None, target_accuracy: float | None,
                        confidence_level: float | None, batch_size: int) -> tuple[str, float]:
    """Check :meth:`Cascade.calibrate`'s options; return the target's name ("agreement"/"accuracy") and value."""
    if target_agreement is not None and target_accuracy is not None:
        raise InputError("calibrate: give target_agreement or target_accuracy, not both",
                         input="target_accuracy", expected="one target", got="both")
    if target_accuracy is not None and labels is None:
        raise InputError("calibrate: target_accuracy needs labels=", input="labels",
                         expected="class indices [N]", got=None)
    if confidence_level is not None and (isinstance(confidence_level, bool) or not isinstance(
            confidence_level, (int, float)) or not 0.5 <= confidence_level < 1.0):
        raise InputError(f"confidence_level: expected a probability in [0.5, 1) or None, got "
                         f"{confidence_level!r}", input="confidence_level", expected="[0.5, 1)",
                         got=confidence_level)
    target_name = "accuracy" if target_accuracy is not None else "agreement"
    target = target_accuracy if target_accuracy is not None else (
        0.99 if target_agreement is None else target_agreement)
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        raise InputError(f"target_{target_name}: expected a fraction in (0, 1], got {target!r}",
                         input=f"target_{target_name}", expected="(0, 1]", got=target)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size: expected a positive int, got {batch_size!r}",
                         input="batch_size", expected="positive int", got=batch_size)
    return target_name, target


def _labels_of(labels: Any, rows: int) -> torch.Tensor:
    truth = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels)
    if truth.dim() != 1 or truth.shape[0] != rows or truth.dtype.is_floating_point:
        raise InputError(f"labels: expected {rows} integer class indices (one per sample), got "
                         f"{truth.dtype} {list(truth.shape)}", input="labels",
                         expected=f"int [{rows}]", got=list(truth.shape))
    return truth


def _pick_threshold(conf_t: torch.Tensor, fast_ok: torch.Tensor, accurate_ok: torch.Tensor, target: float,
                    target_name: str, confidence_level: float | None) -> tuple[float, int, torch.Tensor]:
    """The threshold that routes the fewest samples while meeting ``target``; with ``k``, how many it routes,
    and ``score``, the measured figure for each k = 0..N."""
    rows = conf_t.numel()
    # routing the k least confident samples (k = 0..N); k must not split samples of equal confidence
    order = torch.argsort(conf_t, stable=True)
    sorted_conf = conf_t[order]
    gain = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((accurate_ok - fast_ok)[order], 0)])
    score = (fast_ok.sum() + gain) / rows
    judged = score
    if confidence_level is not None:
        judged = _bounded(fast_ok[order], accurate_ok[order], confidence_level)
    valid = torch.ones(rows + 1, dtype=torch.bool)
    valid[1:rows] = sorted_conf[1:] != sorted_conf[:-1]
    ok = valid & (judged >= target - 1e-12)
    if not bool(ok.any()):
        best = float(torch.where(valid, judged, torch.full_like(judged, -1.0)).max())
        bound = "" if confidence_level is None else f" (its {confidence_level:g} lower bound)"
        raise InputError(
  f"target_{target_name}={target:g} cannot be met on these {rows} samples: the best the cascade "
  f"reaches{bound} is {best:.4f} (measured: fast alone {float(score[0]):.4f}, accurate alone "
  f"{float(score[rows]):.4f})", input=f"target_{target_name}", expected=f"<= {best:.4f}", got=target)
    k = int(torch.nonzero(ok)[0])
    if k == 0:
        threshold = 0.0
    elif k == rows:
        threshold = 1.0
    else:  # halfway between the last routed confidence and the first kept one
        threshold = float((sorted_conf[k - 1] + sorted_conf[k]) / 2)
    return threshold, k, score


def _calibration_figures(routed: torch.Tensor, fast_t: torch.Tensor, accurate_t: torch.Tensor,
                         truth: torch.Tensor | None) -> dict[str, float]:
    """The cascade's agreement with the accurate engine and, with labels, each one's accuracy."""
    final = torch.where(routed, accurate_t, fast_t)
    figures = dict(agreement=float((final == accurate_t).double().mean()))
    if truth is not None:
        truth = truth.long()
        figures.update(fast_accuracy=float((fast_t == truth).double().mean()),
                       accurate_accuracy=float((accurate_t == truth).double().mean()),
                       cascade_accuracy=float((final == truth).double().mean()))
    return figures


def _bounded(fast_ok: torch.Tensor, accurate_ok: torch.Tensor, level: float) -> torch.Tensor:
    """For k = 0..N least confident samples routed: the figure with the kept samples' error rate replaced
    by its one-sided Wilson upper bound at ``level`` (the routed samples count as measured)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(level)
    rows = fast_ok.numel()
    zero = torch.zeros(1, dtype=torch.float64)
    routed_ok = torch.cat([zero, torch.cumsum(accurate_ok, 0)])
    kept_errors = torch.cat([zero, torch.cumsum(1 - fast_ok, 0)])
    kept_errors = kept_errors[-1] - kept_errors           # errors among samples k..N-1
    kept = torch.arange(rows, -1, -1, dtype=torch.float64)  # N - k samples kept
    n = kept.clamp(min=1)
    p = kept_errors / n
    upper = (p + z * z / (2 * n) + z * torch.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    upper = torch.where(kept > 0, upper.clamp(max=1.0), torch.zeros_like(upper))
    return (routed_ok + kept * (1 - upper)) / rows


def _merge(fast_out: Any, accurate_out: Any, index: torch.Tensor) -> Any:
    """``fast_out`` with rows ``index`` replaced by ``accurate_out``'s rows (which hold only those rows)."""
    if isinstance(fast_out, torch.Tensor) and isinstance(accurate_out, torch.Tensor):  # the common case
        return _merge_leaf(0, fast_out, accurate_out, index)
    fast_leaves, tree = pytree.tree_flatten(fast_out)
    accurate_leaves, accurate_tree = pytree.tree_flatten(accurate_out)
    if tree != accurate_tree:
        raise InputError(f"the accurate model's outputs ({accurate_tree}) do not have the fast model's "
                         f"structure ({tree})", input="accurate", expected=str(tree),
                         got=str(accurate_tree))
    merged = [_merge_leaf(i, f, a, index) for i, (f, a) in enumerate(zip(fast_leaves, accurate_leaves))]
    return pytree.tree_unflatten(merged, tree)


def _merge_leaf(i: int, f: Any, a: Any, index: torch.Tensor) -> torch.Tensor:
    f = torch.from_numpy(f) if isinstance(f, np.ndarray) else f
    a = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
    if not isinstance(f, torch.Tensor) or not isinstance(a, torch.Tensor) or f.dim() == 0 \
            or a.shape[1:] != f.shape[1:] or a.shape[0] != index.numel():
        raise InputError(
  f"output {i}: the accurate model gave {list(getattr(a, 'shape', []))} for {index.numel()} routed "
  f"samples; expected [{index.numel()}, {', '.join(map(str, f.shape[1:]))}] like the fast model's",
  input=f"output {i}", expected=[index.numel(), *f.shape[1:]], got=list(getattr(a, "shape", [])))
    out = f.to(torch.promote_types(f.dtype, a.dtype), copy=True)
    out[index.to(out.device)] = a.to(out.device, out.dtype)
    return out
