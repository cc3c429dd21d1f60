"""What ``motorpool.compile`` does, by the kind of ``backend`` and ``precision`` asked for: one name, a list
or ``"auto"`` (:mod:`.auto`), ``"fastest"`` (:mod:`.fastest`), ``precision="auto"`` (:mod:`.precision_search`).

The measuring layer (benchmarks, the technique report) compiles through :func:`compile_model` too, so every
engine it times went through the same checks as the user's.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch

from ..engine.engine import Engine
from ..pipeline.prepare import as_module, prepare
from ..plugin.calibration import materialize_calibration
from ..plugin.contract import PRECISIONS, Option, check_options
from ..plugin.registry import get_registry
from ..techniques.gate import Gate
from .auto import compile_in_order
from .fastest import compile_fastest
from .precision_search import compile_precision_search


def compile_model(model: torch.nn.Module, example_inputs: Any, *, backend: str | Sequence[str] = "auto",
                  device: str = "auto", precision: str = "fp32", dynamic_batch: bool = True,
                  dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
                  input_names: Sequence[str] | None = None, verify: bool = True,
                  calibration: Iterable[Any] | None = None, options: Mapping[str, Any] | None = None,
                  objective: str = "p50", budget_s: float | None = None, candidates: Sequence[str] | None = None,
                  cache: bool | None = None, gate: Gate | None = None) -> Engine:
    """``motorpool.compile`` (see its docstring for every argument)."""
    if gate is not None and not isinstance(gate, Gate):
        raise TypeError(f"gate: expected a motorpool.Gate, got {type(gate).__name__}")
    model = as_module(model)  # a torch.export program (or its module) as a plain module
    calibration = materialize_calibration(calibration)  # every candidate and the verification see it whole
    check_compile_options(backend, candidates, options or {})
    if precision == "auto":
        return compile_precision_search(model, example_inputs, backend=backend, device=device, gate=gate,
                                        dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims,
                                        input_names=input_names, calibration=calibration, options=options,
                                        candidates=candidates, cache=cache)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    examples, spec, tree = prepare(model, example_inputs, dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims,
                                   input_names=input_names)
    if isinstance(backend, str) and backend == "fastest":
        return compile_fastest(model, examples, spec, tree, candidates=candidates, device=device,
                               precision=precision, calibration=calibration, options=options,
                               objective=objective, budget_s=budget_s, cache=cache, gate=gate)
    return compile_in_order(model, examples, spec, tree, backend=backend, device=device, precision=precision,
                            calibration=calibration, options=dict(options or {}), verify=verify,
                            objective=objective, candidates=candidates, cache=cache, gate=gate, budget_s=budget_s)


def check_compile_options(backend: str | Sequence[str], candidates: Sequence[str] | None,
                          options: Mapping[str, Any]) -> None:
    """Every key of ``options`` is declared by the backend named (or, under "auto", "fastest" or a list, by at
    least one candidate): a misspelled key is an :class:`OptionError` naming the valid ones, not a silent
    no-op."""
    if not options:
        return
    reg = get_registry()
    if isinstance(backend, str) and backend not in ("auto", "fastest"):
        b = reg.get(backend)
        check_options(options, b.declared_options(), what=f"backend {b.name!r}")
        return
    names = list(candidates) if candidates else (reg.names() if isinstance(backend, str) else list(backend))
    declared: dict[str, Option] = {}
    for name in names:
        for key, option in reg.get(name).declared_options().items():
            declared.setdefault(key, option)
    unknown = {k: v for k, v in options.items() if k not in declared}
    check_options(unknown, declared, what=f"any of the candidate backends ({', '.join(names)})")
