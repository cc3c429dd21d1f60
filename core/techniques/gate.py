"""Quality gates: measure a task metric of an engine against the model it came from, refuse a drop over budget.

    >>> gate = motorpool.Gate("top1_agreement", data=[x1, x2], max_drop=0.01)
    >>> engine = motorpool.compile(model, x1, precision="int8", gate=gate)   # GateError if over budget

``data`` is a batch (a tensor, or a tuple of a multi-input model's tensors) or a list/iterable of such
batches. ``labels`` (for ``"accuracy"``) is a tensor per batch, in the same order.

A metric maps ``(outputs, reference, labels)`` to a score, higher is better, where ``outputs`` are the
engine's and ``reference`` the model's, each the selected output concatenated over all batches. The
baseline is the reference scored against itself, so the *drop* is ``baseline - score``: for
``top1_agreement`` the baseline is 1, for ``accuracy`` it is the model's own accuracy. ``max_abs_error``
is the one built-in where lower is better (drop = the error itself). Any callable with that signature
(or ``(outputs, reference)``) is a metric; wrap it in :class:`Metric` to say lower is better.

A gate given to ``compile`` is saved with the engine (data, labels and the reference outputs as ``.npy``
files, read back without pickle); ``motorpool.load(path, verify=True)`` re-checks it on the new machine
against the stored reference outputs.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..plugin.errors import ArtifactError, GateError, InputError
from ..engine.manifest import sha256
from ..plugin.helpers import flatten_outputs

GATE_DIR = "gate"


@dataclass(frozen=True)
class Metric:
    """A named score of engine outputs against reference outputs (and labels, when ``needs_labels``)."""

    name: str
    fn: Callable[..., float]
    higher_is_better: bool = True
    needs_labels: bool = False
    #: the score of a perfect engine, when known without computing it (1.0 for agreement, 0.0 for an error)
    ideal: float | None = None

    def score(self, outputs: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None) -> float:
        try:
            n_params = len(inspect.signature(self.fn).parameters)
        except (TypeError, ValueError):
            n_params = 3
        value = self.fn(outputs, reference, labels) if n_params >= 3 else self.fn(outputs, reference)
        return float(value)


def _logits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() != 2 else t


def top1_agreement(outputs: torch.Tensor, reference: torch.Tensor, labels=None) -> float:
    """Fraction of samples whose arg-max class is the reference's (outputs shaped [N, classes])."""
    return float((_logits(outputs).argmax(-1) == _logits(reference).argmax(-1)).double().mean())


def accuracy(outputs: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class is the label."""
    return float((_logits(outputs).argmax(-1) == labels.reshape(-1).to(torch.int64)).double().mean())


def cosine(outputs: torch.Tensor, reference: torch.Tensor, labels=None) -> float:
    """Mean over samples of the cosine similarity of each sample's flattened output with the reference's."""
    a = outputs.reshape(outputs.shape[0], -1).double()
    r = reference.reshape(reference.shape[0], -1).double()
    return float(torch.nn.functional.cosine_similarity(a, r, dim=1, eps=1e-30).mean())


def max_abs_error(outputs: torch.Tensor, reference: torch.Tensor, labels=None) -> float:
    return float((outputs.double() - reference.double()).abs().max()) if outputs.numel() else 0.0


BUILTIN_METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("top1_agreement", top1_agreement, ideal=1.0),
    Metric("accuracy", accuracy, needs_labels=True),
    Metric("cosine", cosine, ideal=1.0),
    Metric("max_abs_error", max_abs_error, higher_is_better=False, ideal=0.0),
]}


def as_metric(metric: str | Metric | Callable[..., float]) -> Metric:
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        try:
            return BUILTIN_METRICS[metric]
        except KeyError:
            raise ValueError(f"unknown gate metric {metric!r}; choose one of: {', '.join(BUILTIN_METRICS)}, "
                             "or pass a callable (outputs, reference[, labels]) -> score") from None
    if callable(metric):
        return Metric(getattr(metric, "__name__", type(metric).__name__), metric)
    raise TypeError(f"gate metric: expected a name, a motorpool.Metric or a callable, got {type(metric).__name__}")


@dataclass
class GateResult:
    """What a gate measured: the engine's score, the baseline, the drop and whether it is within budget."""

    metric: str
    score: float
    baseline: float
    drop: float
    max_drop: float
    passed: bool
    samples: int
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"gate {self.metric}: {self.score:.6g} vs baseline {self.baseline:.6g}, drop {self.drop:.6g} "
                f"(budget {self.max_drop:g}) on {self.samples} samples: {verdict}"
                + (f" ({self.problem})" if self.problem else ""))


def _tensor(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x.detach()
    raise InputError(f"gate data: expected tensors or NumPy arrays, got {type(x).__name__}",
                     input="gate data", expected="tensor", got=type(x).__name__)


def _batches(data: Any) -> list[tuple[torch.Tensor, ...]]:
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return [(_tensor(data),)]
    if isinstance(data, tuple):
        return [tuple(_tensor(x) for x in data)]
    if data is None or isinstance(data, (str, bytes)):
        raise InputError(f"gate data: expected a batch or a list of batches, got {type(data).__name__}",
                         input="gate data", expected="tensor, tuple of tensors, or list of batches",
                         got=type(data).__name__)
    out = [tuple(_tensor(x) for x in item) if isinstance(item, (tuple, list)) else (_tensor(item),)
           for item in data]
    if not out:
        raise InputError("gate data is empty: a gate needs at least one batch", input="gate data",
                         expected="at least one batch", got=0)
    return out


class Gate:
    """A quality gate: ``metric`` on ``data`` may drop by at most ``max_drop`` from the reference model's.

    ``output`` selects which of the model's outputs is scored: an index into the flattened outputs
    (default 0, the first tensor; dict outputs flatten in key order) .
    """

    def __init__(self, metric: str | Metric | Callable[..., float], data: Any, max_drop: float, *,
                 labels: Any = None, output: int = 0):
        self.metric = as_metric(metric)
        if not isinstance(max_drop, (int, float)) or math.isnan(max_drop) or max_drop < 0:
            raise ValueError(f"max_drop: expected a number >= 0, got {max_drop!r}")
        self.max_drop = float(max_drop)
        self.batches = _batches(data)
        self.output = int(output)
        self.labels: list[torch.Tensor] | None = None
        if labels is not None:
            lab = [_tensor(labels)] if isinstance(labels, (torch.Tensor, np.ndarray)) else [_tensor(x) for x in labels]
            if len(lab) != len(self.batches):
                raise InputError(f"gate labels: {len(lab)} label batches for {len(self.batches)} data batches",
                                 input="labels", expected=len(self.batches), got=len(lab))
            for i, (b, y) in enumerate(zip(self.batches, lab)):
                if b[0].dim() and y.shape[0] != b[0].shape[0]:
                    raise InputError(f"gate labels batch {i}: {y.shape[0]} labels for {b[0].shape[0]} samples",
                                     input="labels", expected=b[0].shape[0], got=y.shape[0])
            self.labels = lab
        if self.metric.needs_labels and self.labels is None:
            raise InputError(f"gate metric {self.metric.name!r} needs labels=: one tensor of class indices per "
                             "data batch", input="labels", expected="labels", got=None)
        #: reference outputs, when known without the model (a gate loaded from a saved engine)
        self.reference: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (f"Gate({self.metric.name!r}, {len(self.batches)} batches, {self.samples} samples, "
                f"max_drop={self.max_drop:g})")

    @property
    def samples(self) -> int:
        return sum(int(b[0].shape[0]) if b[0].dim() else 1 for b in self.batches)

    def _collect(self, run: Callable[[list[torch.Tensor]], list[Any]]) -> torch.Tensor:
        picked = []
        for batch in self.batches:
            outs = run(list(batch))
            if not (-len(outs) <= self.output < len(outs)):
                raise InputError(f"gate output={self.output}: the model returns {len(outs)} outputs",
                                 input="output", expected=f"index < {len(outs)}", got=self.output)
            picked.append(_tensor(outs[self.output]).cpu())
        return torch.cat([p.float() if p.dtype == torch.bfloat16 else p for p in picked])

    def reference_outputs(self, model: torch.nn.Module | None) -> torch.Tensor:
        if model is None:
            if self.reference is None:
                raise ValueError("this gate has no reference outputs stored; pass the reference model")
            return self.reference
        def run(inputs):
            with torch.inference_mode():
                return flatten_outputs(model(*inputs))
        return self._collect(run)

    def evaluate(self, engine: Callable[..., Any], model: torch.nn.Module | None = None, *,
                 device: str = "cpu") -> GateResult:
        """Score ``engine`` (anything called like the model) against ``model`` (or stored reference outputs)."""
        reference = self.reference_outputs(model)
        outputs = self._collect(lambda inputs: flatten_outputs(engine(*[x.to(device) for x in inputs])))
        labels = torch.cat(self.labels) if self.labels is not None else None
        n = int(reference.shape[0]) if reference.dim() else 1
        problem = None
        if tuple(outputs.shape) != tuple(reference.shape):
            problem = f"engine output shape {list(outputs.shape)}, reference {list(reference.shape)}"
        elif outputs.dtype.is_floating_point and not bool(torch.isfinite(outputs).all()) \
                and bool(torch.isfinite(reference).all()):
            problem = "the engine's outputs hold NaN/Inf where the reference is finite"
        if problem:
            return GateResult(self.metric.name, math.nan, math.nan, math.inf, self.max_drop, False, n, problem)
        score = self.metric.score(outputs, reference, labels)
        if self.metric.ideal is not None:
            baseline = self.metric.ideal
        else:
            baseline = self.metric.score(reference, reference, labels)
        drop = (baseline - score) if self.metric.higher_is_better else (score - baseline)
        passed = math.isfinite(drop) and drop <= self.max_drop
        return GateResult(self.metric.name, score, baseline, drop, self.max_drop, passed, n,
                          None if math.isfinite(drop) else "the metric is not a finite number")

    def check(self, engine: Callable[..., Any], model: torch.nn.Module | None = None, *, backend: str = "",
              device: str = "cpu") -> GateResult:
        """:meth:`evaluate`, raising :class:`GateError` (with the figures) when over budget."""
        result = self.evaluate(engine, model, device=device)
        if not result.passed:
            raise GateError(f"{backend or 'engine'} fails the quality gate: {result}", backend=backend,
                            figures={"gate": result.to_dict()})
        return result

    # -- persistence (no pickle) -------------------------------------------------------------------

    @property
    def storable(self) -> bool:
        """Whether the gate can be saved and re-checked without its caller: a built-in metric."""
        return BUILTIN_METRICS.get(self.metric.name) is self.metric

    def describe(self) -> dict[str, Any]:
        return {"metric": self.metric.name, "max_drop": self.max_drop, "batches": len(self.batches),
                "inputs": len(self.batches[0]), "samples": self.samples, "output": self.output,
                "builtin": self.storable}

    def save(self, directory: Path, reference: torch.Tensor) -> dict[str, Any]:
        """Write data, labels and ``reference`` outputs as ``.npy`` into ``directory``; return its manifest."""
        directory.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}

        def put(name: str, t: torch.Tensor) -> None:
            arr = t.float().numpy() if t.dtype == torch.bfloat16 else t.cpu().numpy()
            np.save(directory / name, arr, allow_pickle=False)
            files[name] = sha256(directory / name)

        for i, batch in enumerate(self.batches):
            for j, x in enumerate(batch):
                put(f"b{i}_in{j}.npy", x)
            if self.labels is not None:
                put(f"b{i}_labels.npy", self.labels[i])
        put("reference.npy", reference)
        return {**self.describe(), "files": files}

    def check_compiled(self, engine, model: torch.nn.Module, *, backend: str) -> GateResult:
        """What ``compile`` runs after verification: check, remember the gate and result on the engine."""
        reference = self.reference_outputs(model)
        saved_ref, self.reference = self.reference, reference
        try:
            result = self.check(engine, None, backend=backend, device=engine.device)
        finally:
            self.reference = saved_ref
        engine.gate = self
        engine.gate_reference = reference
        engine.report.gate = result.to_dict() | {"batches": len(self.batches)}
        return result

    def save_beside(self, engine, directory: Path) -> dict[str, Any]:
        """Called by ``Engine.save``: writes this gate beside the artifact, returns the manifest entry."""
        # the data and reference outputs are stored even for a custom metric: the caller passes the gate
        # again on load, and its outputs are then scored against the reference stored here
        entry = {"result": getattr(engine.report, "gate", None), **self.describe()}
        return {**entry, **self.save(directory / GATE_DIR, engine.gate_reference), "stored": True}

    @classmethod
    def load(cls, directory: Path, manifest: dict[str, Any], metric: Any = None) -> "Gate":
        """Read a gate :meth:`save` wrote, checking every file's checksum. ``metric`` replaces a custom one."""
        files: dict[str, str] = manifest.get("files", {})
        for name, digest in files.items():
            p = directory / name
            if not p.is_file() or sha256(p) != digest:
                raise ArtifactError(f"{directory}: gate file {name} is missing or does not match its checksum")
        if metric is None:
            if not manifest.get("builtin", False):
                raise ArtifactError(f"{directory}: the gate's metric {manifest.get('metric')!r} is a custom "
                                    "callable, which is not stored; pass gate= to load to re-check it")
            metric = manifest["metric"]

        def read(name: str) -> torch.Tensor:
            return torch.from_numpy(np.load(directory / name, allow_pickle=False))

        n_in = int(manifest["inputs"])
        batches = [tuple(read(f"b{i}_in{j}.npy") for j in range(n_in)) for i in range(manifest["batches"])]
        labels = ([read(f"b{i}_labels.npy") for i in range(manifest["batches"])]
                  if "b0_labels.npy" in files else None)
        gate = cls(metric, batches, manifest["max_drop"], labels=labels, output=manifest.get("output", 0))
        gate.reference = read("reference.npy")
        return gate


def recheck_loaded(engine, path: Path, manifest: dict[str, Any], gate: Gate | None = None) -> GateResult | None:
    """Called by ``load(verify=True)``: re-run the stored gate (or ``gate``, when given) on this machine."""
    entry = manifest.get("gate")
    if gate is None:
        if not entry:
            return None
        if not entry.get("builtin"):
            raise ArtifactError(f"{path}: the engine was gated with a custom metric {entry.get('metric')!r}, "
                                "which is not stored; pass gate= to load to re-check it")
        gate = Gate.load(Path(path) / GATE_DIR, entry)
    elif gate.reference is None and entry and entry.get("stored"):
        stored = Gate.load(Path(path) / GATE_DIR, entry, metric=gate.metric)
        if len(stored.batches) == len(gate.batches) and all(
                all(torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(stored.batches, gate.batches)):
            gate.reference = stored.reference
    if gate.reference is None:
        raise ArtifactError(f"{path}: the gate passed to load has data the artifact holds no reference outputs "
                            "for; re-check it with gate.check(engine, model) and the model")
    result = gate.check(engine, None, backend=engine.backend, device=engine.device)
    engine.gate = gate
    engine.gate_reference = gate.reference
    engine.report.gate = result.to_dict() | {"batches": len(gate.batches), "rechecked_on_load": True}
    return result
