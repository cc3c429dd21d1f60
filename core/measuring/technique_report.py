"""``motorpool.optimize_report``: the techniques table, measured for one model on this machine.

The rules of thumb ("int8 is 2-4x", "ONNX Runtime is 2-5x") become figures: each technique is applied,
compiled, verified, scored with the gate's metric against the original model, and timed side by side with
eager fp32 (interleaved rounds, so a busy machine slows every row alike). A technique that cannot run
here is a row with its reason, never a missing row.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.utils._pytree as pytree

from ..pipeline.candidate import candidate_status, reason
from ..pipeline.prepare import as_module
from ..plugin.registry import BackendInfo, get_registry, list_backends
from ..plugin.spec import InputSpec, as_example_tuple
from ..plugin.torch_precision import model_size_bytes
from ..selection.dispatch import compile_model
from ..selection.timing import measure_interleaved
from ..techniques.distill import distillation_transform
from ..techniques.gate import Gate
from ..techniques.prune import prune


@dataclass(frozen=True)
class Technique:
    """One row: a backend at a precision, optionally on a transformed model (pruning, distillation)."""

    name: str
    backend: str
    precision: str = "fp32"
    #: "none" | "static" (int8 with the calibration set) | "dynamic"
    int8: str | None = None
    #: model -> model before compiling (pruning, distillation); gets (model, example_inputs)
    transform: Callable[[torch.nn.Module, tuple], torch.nn.Module] | None = None
    #: heavy compilers a quick report leaves out
    heavy: bool = False


def _pruned(amount: float) -> Callable[[torch.nn.Module, tuple], torch.nn.Module]:
    def transform(model: torch.nn.Module, examples: tuple) -> torch.nn.Module:
        return prune(model, amount, structured=True, example_inputs=examples).model.eval()
    transform.__name__ = f"prune_structured_{int(amount * 100)}"
    return transform


#: structured pruning amounts the default table tries on the reference backend
PRUNE_AMOUNTS = (0.3, 0.5)


def default_techniques(backends: Sequence[BackendInfo] | None = None) -> tuple[Technique, ...]:
    """The table, from what every registered backend declares: fp32 on each, bf16 where declared, int8 in
    each declared way (``Capabilities.int8_modes``), and structured pruning on the reference backend (the
    one declaring ``reference``, whose fp32 row is the baseline). A compiler declared ``compile_cost="high"``
    is ``heavy`` (``quick=True`` leaves it out)."""
    rows = list(backends if backends is not None else list_backends())
    rows.sort(key=lambda b: (not b.capabilities.get("reference", False), b.name))  # the baseline first
    fp32, bf16, int8, pruned = [], [], [], []
    for b in rows:
        caps = b.capabilities
        heavy = caps.get("compile_cost") == "high"
        reference = caps.get("reference", False)
        fp32.append(Technique(f"{b.name} eval+inference_mode (baseline)" if reference else b.name, b.name,
                              heavy=heavy))
        precisions = set(caps.get("precisions", ()))
        if "bf16" in precisions:
            bf16.append(Technique(f"bf16 {b.name}", b.name, "bf16", heavy=heavy))
        if "int8" in precisions:
            modes = caps.get("int8_modes") or [None]
            int8 += [Technique(f"int8 {mode + ' ' if mode else ''}{b.name}", b.name, "int8", int8=mode, heavy=heavy)
                     for mode in modes]
        if reference:
            pruned += [Technique(f"pruned {int(a * 100)}% structured, {b.name}", b.name, transform=_pruned(a))
                       for a in PRUNE_AMOUNTS]
    return tuple(fp32 + bf16 + int8 + pruned)


def distillation_techniques(student: torch.nn.Module, backends: Sequence[BackendInfo] | None = None, *,
                            data: Any = None, labels: Any = None, **options: Any) -> tuple[Technique, ...]:
    """Rows for a student distilled from the model (see :func:`motorpool.distill`): fp32 on every backend,
    and int8 in the first way each backend declares. The student is distilled once and shared by the rows.
    ``data``/``labels`` are what it trains on (without them, fresh random inputs of the examples' spec:
    faithful to the model rather than accurate on a task); ``options`` go to ``distill`` (epochs, lr...)."""
    transform = distillation_transform(student, data, labels=labels, **options)
    rows = list(backends if backends is not None else list_backends())
    rows.sort(key=lambda b: (not b.capabilities.get("reference", False), b.name))
    fp32, int8 = [], []
    for b in rows:
        caps = b.capabilities
        heavy = caps.get("compile_cost") == "high"
        fp32.append(Technique(f"distilled student, {b.name}", b.name, transform=transform, heavy=heavy))
        if "int8" in set(caps.get("precisions", ())):
            mode = (caps.get("int8_modes") or [None])[0]
            int8.append(Technique(f"distilled student, int8 {mode + ' ' if mode else ''}{b.name}", b.name, "int8",
                                  int8=mode, transform=transform, heavy=heavy))
    return tuple(fp32 + int8)


@dataclass
class Row:
    technique: str
    backend: str
    precision: str
    status: str  # "ok", "unsupported", "failed"
    reason: str = ""
    p50_ms: float | None = None
    speedup: float | None = None
    size_bytes: int | None = None
    metric: str | None = None
    score: float | None = None
    drop: float | None = None
    within_budget: bool | None = None
    compile_s: float | None = None
    #: whether this row's median (and the baseline's) settled: the 95% interval of the median within
    #: SETTLED_CI of it; an unsettled speed-up is printed with a "~" and is not a result
    stable: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: the relative half-width of a median's 95% confidence interval under which a timing counts as settled
SETTLED_CI = 0.05


@dataclass
class OptimizeReport:
    rows: list[Row]
    batch: int
    metric: str
    max_drop: float
    #: naive eager (autograd on) and batching, relative to the baseline
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "metric": self.metric, "max_drop": self.max_drop, "extras": self.extras,
                "rows": [r.to_dict() for r in self.rows]}

    def table(self) -> str:
        head = (f"{'technique':44s} {'backend':13s} {'prec':5s} {'p50 ms':>9s} {'speed-up':>8s} {'size MB':>8s} "
                f"{self.metric[:14]:>14s} {'drop':>9s}  note")
        lines = [f"batch {self.batch}; metric {self.metric} (budget: drop <= {self.max_drop:g}); speed-up over "
                 "eager fp32 in eval + inference mode, timed side by side", head, "-" * len(head)]
        for r in self.rows:
            if r.status != "ok":
                lines.append(f"{r.technique:44s} {r.backend:13s} {r.precision:5s} {'-':>9s} {'-':>8s} {'-':>8s} "
                             f"{'-':>14s} {'-':>9s}  {r.status}: {r.reason[:150]}")
                continue
            size = f"{r.size_bytes / 1e6:.2f}" if r.size_bytes else "-"
            score = f"{r.score:.4f}" if r.score is not None else "-"
            drop = f"{r.drop:.4f}" if r.drop is not None else "-"
            note = "" if r.within_budget in (None, True) else "OVER BUDGET"
            mark = "~" if r.stable is False else ""
            if mark:
                note = (note + "; " if note else "") + "did not settle"
            speed = f"{mark}{r.speedup:.2f}x"
            lines.append(f"{r.technique:44s} {r.backend:13s} {r.precision:5s} {mark + f'{r.p50_ms:.3f}':>9s} "
                         f"{speed:>8s} {size:>8s} {score:>14s} {drop:>9s}  {note}")
        if any(r.stable is False for r in self.rows):
            lines.append("~: did not settle: the median's 95% interval is wider than "
                         f"{SETTLED_CI:.0%} of it; a rough figure, not a result (raise --budget, quiet the machine)")
        for k, v in self.extras.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def default_metric(model: torch.nn.Module, examples: tuple) -> str:
    """top-1 agreement for classifier-like outputs ([N, classes]), cosine otherwise."""
    with torch.inference_mode():
        out = pytree.tree_flatten(model(*examples))[0][0]
    return "top1_agreement" if out.dim() == 2 and out.shape[1] > 1 else "cosine"


def _artifact_bytes(engine) -> int | None:
    tmp = Path(tempfile.mkdtemp(prefix="motorpool-size-"))
    try:
        engine.save(tmp / "e")
        return sum(p.stat().st_size for p in (tmp / "e" / "artifact").rglob("*") if p.is_file())
    except Exception:  # noqa: BLE001 - an unsavable engine: fall back to its module's state size
        module = getattr(engine.runner, "module", None)
        if isinstance(module, torch.nn.Module):
            try:
                return model_size_bytes(module)
            except Exception:  # noqa: BLE001
                return None
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def optimize_report(model: torch.nn.Module, example_inputs: Any, *, data: Any = None, labels: Any = None,
                    gate: Gate | None = None, calibration: Iterable[Any] | None = None,
                    techniques: Sequence[Technique] | None = None, quick: bool = False,
                    budget_s: float = 2.0, batching: int | None = 32, progress: Callable[[str], None] | None = None,
                    threads: int | None = None, student: torch.nn.Module | None = None, distill_data: Any = None,
                    distill_labels: Any = None, distill_options: dict[str, Any] | None = None) -> OptimizeReport:
    """Measure every technique for ``model`` here. Returns an :class:`OptimizeReport` (``print`` it).

    ``data`` (a batch or a list of batches) is what the metric is scored on: ``gate``'s data when a gate
    is given, else a ``top1_agreement`` (classifiers) or ``cosine`` gate with a 1% budget on ``data``
    (``labels`` switches to ``accuracy``). Without data, fresh random inputs of the example's spec are
    used, which says how faithful an engine is, not how accurate. ``calibration`` (default: the data)
    feeds static int8. ``quick`` leaves out the slow compilers (torch.compile). ``budget_s`` is the total
    timing budget, shared by the rows. ``threads`` runs every engine on that many threads (torch's
    intra-op pool, ONNX Runtime's ``intra_op_num_threads``, OpenVINO's ``num_threads``), so that rows
    compare techniques rather than thread pools; on a busy machine one thread also avoids the stalls of
    a parallel region waiting for a descheduled worker.

    ``student`` (an ``nn.Module`` with the model's output shape) adds the distillation rows
    (:func:`distillation_techniques`): the student is distilled from ``model`` on ``distill_data``
    (``distill_labels``; default: fresh random inputs of the spec), then compiled, gated against the model
    and timed like every other row, on every backend (on the backends ``techniques`` use, when given);
    ``extras["distillation"]`` holds its report. ``distill_options`` go to :func:`motorpool.distill`. Keep
    ``data`` (the scoring set) apart from ``distill_data``.
    """
    if student is not None:
        if not isinstance(student, torch.nn.Module):
            raise ValueError(f"student: expected a torch.nn.Module, got {type(student).__name__}")
        backends = list_backends()
        if techniques is not None:
            wanted = {t.backend for t in techniques}
            backends = [b for b in backends if b.name in wanted]
        base = list(techniques) if techniques is not None else list(default_techniques(backends))
        techniques = base + list(distillation_techniques(student, backends, data=distill_data,
                                                         labels=distill_labels, **(distill_options or {})))
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected a positive integer, got {threads!r}")
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return _optimize_report(model, example_inputs, data=data, labels=labels, gate=gate,
                                    calibration=calibration, techniques=techniques, quick=quick,
                                    budget_s=budget_s, batching=batching, progress=progress,
                                    options={"intra_op_num_threads": threads, "num_threads": threads})
        finally:
            torch.set_num_threads(saved)
    return _optimize_report(model, example_inputs, data=data, labels=labels, gate=gate, calibration=calibration,
                            techniques=techniques, quick=quick, budget_s=budget_s, batching=batching,
                            progress=progress, options={})


def _optimize_report(model, example_inputs, *, data, labels, gate, calibration, techniques, quick, budget_s,
                     batching, progress, options) -> OptimizeReport:
    say = progress or (lambda _msg: None)
    model = as_module(model)
    model.eval()
    examples = as_example_tuple(example_inputs)
    gate = gate if gate is not None else _default_gate(model, examples, data, labels)
    calib = calibration if calibration is not None else [b for b in gate.batches]
    available = {b.name: b for b in list_backends()}
    techs = list(techniques) if techniques is not None else list(default_techniques(list(available.values())))
    rows: list[Row] = []
    engines: dict[int, Any] = {}
    for tech in techs:
        row = Row(tech.name, tech.backend, tech.precision, "ok")
        rows.append(row)
        engine = _measure_row(row, tech, model, examples, gate, calib, available, quick=quick, options=options,
                              say=say)
        if engine is not None:
            engines[len(rows) - 1] = engine
    batch = int(examples[0].shape[0]) if examples and examples[0].dim() else 1
    extras: dict[str, Any] = {}
    if engines:
        say(f"timing {len(engines)} engines side by side ...")
        baseline = next((i for i in engines if techs[i].transform is None and techs[i].precision == "fp32"
                         and available[techs[i].backend].capabilities.get("reference")), None)
        extras.update(_time_rows(rows, engines, model, examples, baseline, batch=batch, budget_s=budget_s))
    if batching and batching > 1 and any(r.status == "ok" for r in rows):
        extras.update(_batching_gain(model, examples, batching, budget_s / 4))
    distilled = {id(t.transform): t.transform for t in techs if getattr(t.transform, "reports", None)}
    for transform in distilled.values():
        extras["distillation"] = str(transform.reports[-1])
    return OptimizeReport(rows, batch, gate.metric.name, gate.max_drop, extras)


def _default_gate(model: torch.nn.Module, examples: tuple, data: Any, labels: Any) -> Gate:
    """A 1% budget on ``data`` (fresh random inputs of the spec without it): accuracy with labels, else
    top-1 agreement for classifier-like outputs, cosine otherwise."""
    if data is None:
        spec = InputSpec.from_examples(examples)
        gen = torch.Generator().manual_seed(7)
        data = [tuple(spec.random_inputs(generator=gen)) for _ in range(4)]
    metric = "accuracy" if labels is not None else default_metric(model, examples)
    return Gate(metric, data, 0.01, labels=labels)


def _measure_row(row: Row, tech: Technique, model, examples, gate: Gate, calib, available, *, quick: bool,
                 options: dict, say) -> Any:
    """Compile and gate one technique into ``row``; its engine, or None with the row saying why."""
    if quick and tech.heavy:
        row.status, row.reason = "unsupported", "left out by quick=True (compiles for tens of seconds)"
        return None
    info = available.get(tech.backend)
    if info is None or not info.available:
        row.status = "unsupported"
        row.reason = (f"no backend {tech.backend!r} is registered" if info is None
                      else f"{info.status}: {info.reason}")
        return None
    say(f"compiling {tech.name} ...")
    t0 = time.perf_counter()
    try:
        subject = tech.transform(model, examples) if tech.transform else model
        declared = _declared_option_names(tech.backend)
        tech_options = {k: v for k, v in {**options, **({"int8": tech.int8} if tech.int8 else {})}.items()
                        if k in declared} or None
        engine = compile_model(subject, examples, backend=tech.backend, precision=tech.precision,
                               calibration=calib if tech.int8 != "dynamic" and tech.precision == "int8" else None,
                               options=tech_options, cache=False)
        result = gate.evaluate(engine, model, device=engine.device)
    except Exception as exc:  # noqa: BLE001 - one row's failure is that row's reason
        row.status = "unsupported" if candidate_status(exc) == "skipped" else "failed"
        row.reason = reason(exc)
        return None
    row.compile_s = time.perf_counter() - t0
    row.metric, row.score, row.drop, row.within_budget = result.metric, result.score, result.drop, result.passed
    row.size_bytes = _artifact_bytes(engine)
    return engine


def _declared_option_names(backend: str) -> set[str]:
    return set(get_registry().get(backend).declared_options())


def _time_rows(rows: list[Row], engines: dict[int, Any], model, examples, baseline: int | None, *, batch: int,
               budget_s: float) -> dict[str, str]:
    """Time every engine side by side (and the model called directly, with and without autograd)."""
    calls: dict[Any, Any] = {i: (lambda e=e: e(*[x.to(e.input_spec.device) for x in examples]))
                             for i, e in engines.items()}

    # the model called directly, with and without autograd: what eval + inference_mode buys, apart
    # from the engine's own input checks
    def raw(grad: bool):
        def call():
            with torch.enable_grad() if grad else torch.inference_mode():
                return model(*examples)
        return call
    calls["raw autograd"], calls["raw inference"] = raw(True), raw(False)
    timings = measure_interleaved(calls, budget_s=budget_s, batch=batch)
    base = timings[baseline]["p50_ms"] if baseline in timings else None

    def settled(*keys) -> bool:
        return all(timings[k].get("median_ci", math.inf) <= SETTLED_CI for k in keys if k in timings)

    for i, t in timings.items():
        if isinstance(i, int):
            rows[i].p50_ms = t["p50_ms"]
            rows[i].speedup = base / t["p50_ms"] if base else math.nan
            rows[i].stable = settled(i, baseline)
    grad_ms, inf_ms = timings["raw autograd"]["p50_ms"], timings["raw inference"]["p50_ms"]
    figure = f"{grad_ms / inf_ms:.2f}x ({grad_ms:.3f} -> {inf_ms:.3f} ms)"
    if not settled("raw autograd", "raw inference"):
        figure = f"~{figure}; did not settle, not a result"
    return {"inference_mode vs autograd on (eval mode, the model called directly)": figure}


def _batching_gain(model: torch.nn.Module, examples: tuple, batch: int, budget_s: float) -> dict[str, str]:
    """Per-item time at batch 1 vs ``batch`` on eager fp32: what batching requests buys on this model."""
    spec = InputSpec.from_examples(examples)
    if not spec.has_dynamic_batch:
        return {}
    gen = torch.Generator().manual_seed(3)
    one = spec.random_inputs(generator=gen, sizes={"batch": 1})
    many = spec.random_inputs(generator=gen, sizes={"batch": batch})

    def run(xs):
        with torch.inference_mode():
            return model(*xs)
    t = measure_interleaved({"1": lambda: run(one), "n": lambda: run(many)}, budget_s=budget_s)
    per_item_1 = t["1"]["p50_ms"]
    per_item_n = t["n"]["p50_ms"] / batch
    figure = f"{per_item_1 / per_item_n:.2f}x ({per_item_1:.3f} -> {per_item_n:.3f} ms/item)"
    if max(t["1"].get("median_ci", math.inf), t["n"].get("median_ci", math.inf)) > SETTLED_CI:
        figure = f"~{figure}; did not settle, not a result"
    return {f"batching (eager fp32): per-item time at batch {batch} vs batch 1": figure}
