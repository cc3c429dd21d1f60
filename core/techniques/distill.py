"""Knowledge distillation, model to model: train a small student to match a big teacher (Hinton et al. 2015).

    >>> student, report = motorpool.distill(teacher, student, x_train, labels=y_train)
    >>> report.agreement, report.student_accuracy, report.params_after / report.params_before

The loss is the KL divergence between the teacher's and the student's temperature-softened outputs, scaled
by ``temperature ** 2`` (so its gradients keep their size as the temperature changes), plus, when labels are
given, the cross-entropy on the labels: ``alpha * T^2 * KL + (1 - alpha) * CE``. Without labels the data
may be anything the teacher accepts: the teacher labels it. Training is Adam on mini-batches; a held-out
split (``val_fraction``) decides when to stop (no better loss for ``patience`` epochs) and which epoch's
weights the student keeps. The teacher is run once over the data, in eval and inference mode, and is never
modified; the student is returned trained, in eval mode.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..plugin.errors import InputError, MotorpoolError
from ..plugin.spec import InputSpec


@dataclass
class DistillReport:
    """What distillation did. "before" is the teacher, "after" the student; figures on the held-out split.

    ``agreement``: fraction of held-out samples where the student's top-1 class is the teacher's.
    ``teacher_accuracy``/``student_accuracy``: top-1 accuracy on the held-out labels (None without labels).
    ``flops_*``: floating-point operations of one sample's forward pass (None when the teacher is not a
    module, e.g. a compiled engine).
    """

    agreement: float
    teacher_accuracy: float | None
    student_accuracy: float | None
    params_before: int | None
    params_after: int
    flops_before: int | None
    flops_after: int
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    best_val_loss: float
    train_samples: int
    val_samples: int
    #: "held-out" (the val split) or "train" (val_fraction=0: no split was held out)
    measured_on: str
    temperature: float
    alpha: float
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        acc = ""
        if self.student_accuracy is not None:
            acc = f", accuracy teacher {self.teacher_accuracy:.2%} -> student {self.student_accuracy:.2%}"
        params = (f"{self.params_before:,} -> {self.params_after:,}" if self.params_before is not None
                  else f"student {self.params_after:,}")
        flops = (f"{self.flops_before:,} -> {self.flops_after:,}" if self.flops_before is not None
                 else f"student {self.flops_after:,}")
        stop = f"stopped early, best epoch {self.best_epoch}" if self.stopped_early else f"best epoch {self.best_epoch}"
        return (f"distilled (T={self.temperature:g}, alpha={self.alpha:g}): agreement with the teacher "
                f"{self.agreement:.2%}{acc} on {self.val_samples} {self.measured_on} samples; params {params}; "
                f"FLOPs/sample {flops}; {self.epochs_run} epochs ({stop}) in {self.train_seconds:.1f}s")


class _Bar:
    """One line on stderr rewritten each epoch; shown only when stderr is a terminal (or forced on)."""

    def __init__(self, total: int, enabled: bool | None, stream: IO[str] | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = bool(enabled)
        self.started = time.perf_counter()

    def update(self, epoch: int, text: str) -> None:
        if not self.enabled:
            return
        width = 20
        filled = int(width * epoch / max(self.total, 1))
        elapsed = time.perf_counter() - self.started
        self.stream.write(f"\r\033[Kmotorpool distill [{'#' * filled}{'.' * (width - filled)}] "
                          f"epoch {epoch}/{self.total} {text} ({elapsed:.1f}s)")
        self.stream.flush()

    def close(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"\r\033[Kmotorpool distill: {text}\n")
            self.stream.flush()


# -- inputs ------------------------------------------------------------------------------------------------


def _as_inputs(data: Any, what: str) -> tuple[torch.Tensor, ...]:
    """One tensor/array, or a tuple/list of them (one per model input), all with the same number of rows."""
    items = (data,) if isinstance(data, (torch.Tensor, np.ndarray)) else data
    if not isinstance(items, (tuple, list)) or not items:
        raise InputError(
  f"{what}: expected a tensor, a NumPy array or a non-empty tuple of them (one per model input), "
  f"got {type(data).__name__}", input=what, expected="tensor or tuple of tensors",
  got=type(data).__name__)
    out = []
    for i, x in enumerate(items):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{what}[{i}]: expected a torch.Tensor or numpy.ndarray, got "
                             f"{type(x).__name__}", input=f"{what}[{i}]", expected="Tensor",
                             got=type(x).__name__)
        if x.dim() == 0:
            raise InputError(f"{what}[{i}]: expected a batch of samples (rank >= 1), got a scalar",
                             input=f"{what}[{i}]", expected="rank >= 1", got=0)
        out.append(x)
    rows = {int(x.shape[0]) for x in out}
    if len(rows) != 1:
        raise InputError(f"{what}: every input needs the same number of rows (samples), got "
                         f"{[int(x.shape[0]) for x in out]}", input=what, expected="equal rows",
                         got=sorted(rows))
    if rows == {0}:
        raise InputError(f"{what}: no samples (0 rows)", input=what, expected="at least 1 sample",
                         got=0)
    return tuple(out)


def _as_labels(labels: Any, rows: int) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, torch.Tensor):
        raise InputError(f"labels: expected a tensor or NumPy array of class indices, got "
                         f"{type(labels).__name__}", input="labels", expected="Tensor",
                         got=type(labels).__name__)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise InputError(f"labels: expected a 1-d integer tensor of class indices, got dtype "
                         f"{labels.dtype} shape {list(labels.shape)}", input="labels",
                         expected="int [N]", got=f"{labels.dtype} {list(labels.shape)}")
    if labels.shape[0] != rows:
        raise InputError(f"labels: expected {rows} labels (one per sample of data), got "
                         f"{labels.shape[0]}", input="labels", expected=rows, got=int(labels.shape[0]))
    return labels.long()


def logits_of(output: Any, which: int | str, model: str) -> torch.Tensor:
    """The logits among a model's outputs: the output itself, or ``output[which]`` of a tuple/list/dict."""
    if isinstance(output, (tuple, list)):
        if not isinstance(which, int) or not -len(output) <= which < len(output):
            raise InputError(f"output={which!r}: the {model} returns {len(output)} outputs; expected "
                             f"an index in 0..{len(output) - 1}", input="output",
                             expected=f"0..{len(output) - 1}", got=which)
        output = output[which]
    elif isinstance(output, dict):
        key = which if which in output else (list(output)[which] if isinstance(which, int)
                                             and -len(output) <= which < len(output) else None)
        if key is None:
            raise InputError(f"output={which!r}: the {model} returns outputs {list(output)}; "
                             "expected one of those keys or an index", input="output",
                             expected=list(output), got=which)
        output = output[key]
    if isinstance(output, np.ndarray):
        output = torch.from_numpy(output)
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or not output.dtype.is_floating_point:
        got = (f"{output.dtype} {list(output.shape)}" if isinstance(output, torch.Tensor)
               else type(output).__name__)
        raise InputError(f"the {model}'s logits: expected a float tensor [batch, classes], got {got}",
                         input=model, expected="[batch, classes]", got=got)
    return output


def _rows(inputs: Sequence[torch.Tensor], index: torch.Tensor | slice) -> tuple[torch.Tensor, ...]:
    return tuple(x[index] for x in inputs)


def _count_flops(model: nn.Module, sample: tuple[torch.Tensor, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*sample)
    return int(counter.get_total_flops())


def _params(model: Any) -> int | None:
    return sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else None


def _teacher_logits(teacher: Callable, inputs: tuple[torch.Tensor, ...], output: int | str,
                    batch_size: int) -> torch.Tensor:
    parts = []
    with torch.no_grad():  # not inference_mode: its tensors could not serve as training targets
        for start in range(0, inputs[0].shape[0], batch_size):
            parts.append(logits_of(teacher(*_rows(inputs, slice(start, start + batch_size))), output,
                                   "teacher").float().clone())
    return torch.cat(parts)


def _loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
          temperature: float, alpha: float) -> torch.Tensor:
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits / temperature, dim=-1),
                                nn.functional.log_softmax(teacher_logits / temperature, dim=-1),
                                reduction="batchmean", log_target=True) * temperature ** 2
    if labels is None:
        return soft
    return alpha * soft + (1 - alpha) * nn.functional.cross_entropy(student_logits, labels)


def _check_number(name: str, value: Any, *, low: float, high: float | None = None, integer: bool = False,
                  low_open: bool = False) -> None:
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > low if low_open else value >= low)
    ok = ok and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise InputError(f"{name}: expected {'an int' if integer else 'a number'} {bound}, got "
                         f"{value!r}", input=name, expected=bound, got=value)


# -- the technique's steps ------------------------------------------------------------------------------------


def _check_arguments(teacher: Callable, student: nn.Module, *, epochs: int, lr: float, temperature: float,
                     alpha: float, batch_size: int, val_fraction: float, patience: int) -> None:
    if not isinstance(student, nn.Module):
        raise InputError(f"student: expected a torch.nn.Module to train, got {type(student).__name__}",
                         input="student", expected="nn.Module", got=type(student).__name__)
    if not callable(teacher):
        raise InputError(f"teacher: expected an nn.Module or an engine called like the model, got "
                         f"{type(teacher).__name__}", input="teacher", expected="callable",
                         got=type(teacher).__name__)
    if teacher is student:
        raise InputError("teacher and student are the same object; pass a separate student",
                         input="student", expected="a different module", got="the teacher")
    _check_number("epochs", epochs, low=1, integer=True)
    _check_number("batch_size", batch_size, low=1, integer=True)
    _check_number("patience", patience, low=1, integer=True)
    _check_number("lr", lr, low=0, low_open=True)
    _check_number("temperature", temperature, low=0, low_open=True)
    _check_number("alpha", alpha, low=0, high=1)
    _check_number("val_fraction", val_fraction, low=0, high=0.9)


def _run_teacher(teacher: Callable, inputs: tuple[torch.Tensor, ...], output: int | str, batch_size: int,
                 device: torch.device) -> tuple[torch.Tensor, int | None]:
    """The teacher's logits on every sample and its FLOPs per sample; a module's train/eval mode is restored."""
    teacher_was_training = teacher.training if isinstance(teacher, nn.Module) else None
    if isinstance(teacher, nn.Module):
        teacher.eval()
    try:
        soft_targets = _teacher_logits(teacher, inputs, output, max(batch_size, 256)).to(device)
        flops_before = _count_flops(teacher, _rows(inputs, slice(0, 1))) if isinstance(teacher, nn.Module) else None
    finally:
        if teacher_was_training:
            teacher.train()
    return soft_targets, flops_before


def _check_label_range(targets: torch.Tensor, classes: int) -> None:
    if int(targets.min()) < 0 or int(targets.max()) >= classes:
        raise InputError(f"labels: expected class indices in 0..{classes - 1} (the teacher has "
                         f"{classes} outputs), got {int(targets.min())}..{int(targets.max())}",
                         input="labels", expected=f"0..{classes - 1}",
                         got=(int(targets.min()), int(targets.max())))


def _split(rows: int, val_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(val_idx, train_idx)``: a seeded shuffle of the rows, the first ``val_fraction`` of it held out."""
    order = torch.randperm(rows, generator=generator)
    n_val = int(round(rows * val_fraction)) if val_fraction > 0 else 0
    if val_fraction > 0:
        n_val = max(1, n_val)
        if rows - n_val < 1:
            raise InputError(f"data: {rows} sample(s) cannot be split into training and held-out "
                             f"parts (val_fraction={val_fraction}); give more data or val_fraction=0",
                             input="data", expected="at least 2 samples", got=rows)
    return order[:n_val], order[n_val:]


@dataclass
class _Lesson:
    """The student and what it learns from: the inputs, the teacher's logits and the optional labels."""

    student: nn.Module
    inputs: tuple[torch.Tensor, ...]
    soft_targets: torch.Tensor
    targets: torch.Tensor | None
    output: int | str
    temperature: float
    alpha: float

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        return logits_of(self.student(*_rows(self.inputs, idx)), self.output, "student")

    def loss(self, got: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return _loss(got, self.soft_targets[idx], None if self.targets is None else self.targets[idx],
                     self.temperature, self.alpha)

    def check_classes(self, idx: torch.Tensor) -> None:
        """The student's logits must be shaped like the teacher's; probed on two samples before training."""
        classes = self.soft_targets.shape[1]
        self.student.eval()
        with torch.no_grad():
            probe = self.logits(idx[:2])
        if probe.shape[1] != classes:
            raise InputError(f"student: outputs {probe.shape[1]} classes but the teacher outputs {classes}; "
                             "their logits must have the same shape", input="student",
                             expected=[probe.shape[0], classes], got=list(probe.shape))

    def evaluate(self, idx: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The student's loss and logits on rows ``idx``, in eval mode."""
        self.student.eval()
        with torch.no_grad():
            got = torch.cat([self.logits(idx[i:i + 256]).float() for i in range(0, len(idx), 256)])
        return float(self.loss(got, idx)), got

    def train_epoch(self, optimizer: torch.optim.Optimizer, shuffled: torch.Tensor, batch_size: int,
                    epoch: int, lr: float) -> torch.Tensor:
        """One pass over ``shuffled`` in mini-batches; returns the last batch's loss."""
        self.student.train()
        for start in range(0, len(shuffled), batch_size):
            idx = shuffled[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.logits(idx).float(), idx)
            if not torch.isfinite(loss):
                raise MotorpoolError(f"distillation diverged at epoch {epoch} (loss {float(loss)}); "
                                     f"try a smaller lr than {lr:g}")
            loss.backward()
            optimizer.step()
        return loss


@dataclass
class _EarlyStopping:
    """The best held-out loss so far, the weights and epoch that gave it, and epochs since."""

    patience: int
    best_loss: float = math.inf
    best_state: dict[str, Any] | None = None
    best_epoch: int = 0
    since_best: int = 0

    def should_stop(self, epoch: int, val_loss: float, student: nn.Module) -> bool:
        # 1e-6: a loss that only jitters in the last digits is no improvement worth waiting for
        if val_loss < self.best_loss - 1e-6:
            self.best_loss, self.best_epoch, self.since_best = val_loss, epoch, 0
            self.best_state = copy.deepcopy(student.state_dict())
        else:
            self.since_best += 1
        return self.since_best >= self.patience


def _train(lesson: _Lesson, train_idx: torch.Tensor, val_idx: torch.Tensor, generator: torch.Generator, *,
           epochs: int, lr: float, batch_size: int, patience: int, bar: _Bar, seed: int) -> tuple[int, int]:
    """Adam for up to ``epochs``, stopping early on the held-out loss; loads the best weights when there is a
    held-out split. Returns ``(epochs_run, best_epoch)``."""
    optimizer = torch.optim.Adam(lesson.student.parameters(), lr=lr)
    stopping = _EarlyStopping(patience)
    epoch = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            shuffled = train_idx[torch.randperm(len(train_idx), generator=generator)]
            loss = lesson.train_epoch(optimizer, shuffled, batch_size, epoch, lr)
            if len(val_idx):
                val_loss, _ = lesson.evaluate(val_idx)
                stop = stopping.should_stop(epoch, val_loss, lesson.student)
                bar.update(epoch, f"held-out loss {val_loss:.4f} (best {stopping.best_loss:.4f} @ "
                                  f"{stopping.best_epoch})")
                if stop:
                    break
            else:
                stopping.best_epoch = epoch
                bar.update(epoch, f"loss {float(loss):.4f}")
    if stopping.best_state is not None:
        lesson.student.load_state_dict(stopping.best_state)
    return epoch, stopping.best_epoch


def _accuracies(teacher_top: torch.Tensor, student_top: torch.Tensor,
                truth: torch.Tensor | None) -> tuple[float | None, float | None]:
    if truth is None:
        return None, None
    return float((teacher_top == truth).double().mean()), float((student_top == truth).double().mean())


# -- the technique ------------------------------------------------------------------------------------------


def distill(teacher: Callable, student: nn.Module, data: Any, *, labels: Any = None, epochs: int = 60,
            lr: float = 5e-3, temperature: float = 4.0, alpha: float = 0.7, batch_size: int = 64,
            val_fraction: float = 0.1, patience: int = 5, output: int | str = 0, progress: bool | None = None,
            seed: int = 0) -> tuple[nn.Module, DistillReport]:
    """Train ``student`` to reproduce ``teacher`` on ``data``; return ``(student, report)``.

    - ``teacher``: an ``nn.Module`` or any callable like the model (a motorpool engine); run once over the
      data, in eval and inference mode; never modified (a module's train/eval mode is restored).
    - ``student``: the ``nn.Module`` to train, in place; returned in eval mode with its best epoch's weights.
    - ``data``: the inputs, a tensor/array or a tuple of them (one per model input), ``[N, ...]`` each.
    - ``labels``: optional class indices ``[N]``; with them the loss adds ``(1 - alpha) *`` cross-entropy.
    - ``temperature``: softens both distributions (Hinton et al. use 2-20; 4 is a common start).
    - ``val_fraction``: share of the samples held out for early stopping and for the report's figures;
      0 trains on everything, runs every epoch and measures on the training data.
    - ``patience``: epochs without a better held-out loss before stopping.
    - ``output``: which output holds the logits when the models return a tuple or dict.
    - ``progress``: a one-line bar on stderr; None shows it only on a terminal.
    - ``seed``: the split, the shuffling and the student's randomness (dropout); the global RNG is untouched.
    """
    _check_arguments(teacher, student, epochs=epochs, lr=lr, temperature=temperature, alpha=alpha,
                     batch_size=batch_size, val_fraction=val_fraction, patience=patience)
    inputs = _as_inputs(data, "data")
    rows = int(inputs[0].shape[0])
    targets = None if labels is None else _as_labels(labels, rows)
    device = next((p.device for p in student.parameters()), torch.device("cpu"))
    inputs = tuple(x.to(device) for x in inputs)
    soft_targets, flops_before = _run_teacher(teacher, inputs, output, batch_size, device)
    if targets is not None:
        targets = targets.to(device)
        _check_label_range(targets, soft_targets.shape[1])

    generator = torch.Generator().manual_seed(seed)  # one stream: the split first, then each epoch's shuffle
    val_idx, train_idx = _split(rows, val_fraction, generator)
    eval_idx = val_idx if len(val_idx) else train_idx
    lesson = _Lesson(student, inputs, soft_targets, targets, output, temperature, alpha)
    lesson.check_classes(eval_idx)

    bar = _Bar(epochs, progress)
    started = time.perf_counter()
    epochs_run, best_epoch = _train(lesson, train_idx, val_idx, generator, epochs=epochs, lr=lr,
                                    batch_size=batch_size, patience=patience, bar=bar, seed=seed)
    val_loss, student_logits = lesson.evaluate(eval_idx)
    seconds = time.perf_counter() - started
    student.eval()
    picked = student_logits.argmax(-1)
    teacher_top = soft_targets[eval_idx].argmax(-1)
    teacher_acc, student_acc = _accuracies(teacher_top, picked, None if targets is None else targets[eval_idx])
    report = DistillReport(
        agreement=float((picked == teacher_top).double().mean()), teacher_accuracy=teacher_acc,
        student_accuracy=student_acc, params_before=_params(teacher), params_after=_params(student),
        flops_before=flops_before, flops_after=_count_flops(student, _rows(inputs, slice(0, 1))),
        epochs_run=epochs_run, best_epoch=best_epoch, stopped_early=epochs_run < epochs, best_val_loss=val_loss,
        train_samples=len(train_idx), val_samples=len(eval_idx),
        measured_on="held-out" if len(val_idx) else "train",
        temperature=float(temperature), alpha=float(alpha), train_seconds=seconds)
    bar.close(str(report))
    return student, report


def distillation_transform(student: nn.Module, data: Any = None, *, labels: Any = None, samples: int = 2048,
                           **options: Any) -> Callable[[nn.Module, tuple], nn.Module]:
    """A model -> model transform (``optimize_report``'s ``Technique.transform``): a copy of ``student``
    distilled from the model it is given. ``data`` (and ``labels``) are the training inputs; without them,
    ``samples`` fresh random inputs of the examples' spec, which teaches the student to be faithful to the
    model on that spread of inputs rather than accurate on a task. The distilled student is made once
    per teacher and shared by every row that uses the transform; its report is ``transform.reports``."""
    if not isinstance(student, nn.Module):
        raise InputError(f"student: expected a torch.nn.Module, got {type(student).__name__}",
                         input="student", expected="nn.Module", got=type(student).__name__)
    made: dict[int, tuple[nn.Module, nn.Module]] = {}
    reports: list[DistillReport] = []

    def transform(model: nn.Module, examples: tuple) -> nn.Module:
        if id(model) in made and made[id(model)][0] is model:
            return made[id(model)][1]
        train = data
        if train is None:
            spec = InputSpec.from_examples(examples)
            train = tuple(spec.random_inputs(generator=torch.Generator().manual_seed(11), sizes={"batch": samples}))
        trained, report = distill(model, copy.deepcopy(student), train, labels=labels,
                                  **{"progress": False, **options})
        made[id(model)] = (model, trained)
        reports.append(report)
        return trained

    transform.__name__ = "distill"
    transform.reports = reports  # type: ignore[attr-defined]
    return transform
