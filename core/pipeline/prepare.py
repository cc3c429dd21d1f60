"""Steps 1-2 of every compile, and the inputs verification runs.

``prepare`` puts the model in eval mode, turns the examples into a tuple, records the input spec and reads
the output structure from one eager run; ``verification_inputs`` draws the cases the engine is compared on
(fresh random inputs of the spec, or the calibration data's range for static int8).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.utils._pytree as pytree

from ..plugin.calibration import calibration_batches
from ..plugin.errors import CompileError
from ..plugin.spec import InputSpec, as_example_tuple, input_names as default_input_names

#: batch sizes drawn for verification beside the example's own, when the batch is dynamic
VERIFY_BATCH_SIZES = (1, 3)

Cases = list[tuple[str, list[torch.Tensor]]]


class ExportedModule(torch.nn.Module):
    """A ``torch.export`` program as a plain module. ``ExportedProgram.module()`` refuses ``train()``/``eval()``
    (``NotImplementedError: Calling eval() is not supported yet``), which every compile calls; the program was
    captured in one mode and runs only in it, so here the switch only records the flag."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.program = module

    def forward(self, *inputs):
        return self.program(*inputs)

    def train(self, mode: bool = True) -> "ExportedModule":
        self.training = mode
        return self

    def input_names(self) -> list[str]:
        """The program's positional input names (the original ``forward``'s argument names)."""
        return [n.name for n in self.program.graph.nodes if n.op == "placeholder"]

    def static_axes(self) -> list[set[int]]:
        """Per positional input, the axes the program was captured with a fixed size (torch.export keeps a
        symbolic size only for the dimensions exported as dynamic)."""
        out = []
        for node in self.program.graph.nodes:
            if node.op == "placeholder" and "val" in node.meta and hasattr(node.meta["val"], "shape"):
                out.append({i for i, d in enumerate(node.meta["val"].shape) if isinstance(d, int)})
        return out


def as_module(model: Any) -> torch.nn.Module:
    """``model`` as a module every compile path can put in eval mode: an ``ExportedProgram`` (or the module
    of one) is wrapped in :class:`ExportedModule`; any other module is returned as it is."""
    if isinstance(model, torch.export.ExportedProgram):
        return ExportedModule(model.module())
    if isinstance(model, torch.nn.Module) and not isinstance(model, ExportedModule):
        try:
            model.train(model.training)  # what eval() runs; refused only by exported programs' modules
        except NotImplementedError:
            return ExportedModule(model)
    return model


def prepare(model: torch.nn.Module, example_inputs: Any, *, dynamic_batch: bool = True,
            dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
            input_names: Sequence[str] | None = None) -> tuple[tuple[torch.Tensor, ...], InputSpec, Any]:
    """The model in eval mode, the examples as a tuple, the input spec, and the output structure from one
    eager run. Raises for a non-module or for outputs that are not tensors."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model.eval()
    examples = as_example_tuple(example_inputs)
    names = list(input_names) if input_names else _default_names(model, len(examples))
    if isinstance(model, ExportedModule):  # a captured program decides which dimensions may vary
        dynamic_batch, dynamic_dims = _program_dims(model, names, dynamic_batch, dynamic_dims)
    spec = InputSpec.from_examples(examples, names=names, dynamic_batch=dynamic_batch, dynamic_dims=dynamic_dims)
    with torch.inference_mode():
        flat_ref, tree = pytree.tree_flatten(model(*examples))
    if not all(isinstance(t, torch.Tensor) for t in flat_ref):
        kinds = sorted({type(t).__name__ for t in flat_ref if not isinstance(t, torch.Tensor)})
        raise CompileError(f"the model returns non-tensor outputs ({', '.join(kinds)}); motorpool engines "
                           "return tensors in (nested) tuples, lists and dicts")
    return examples, spec, tree


def _default_names(model: torch.nn.Module, count: int) -> list[str]:
    if isinstance(model, ExportedModule):
        names = model.input_names()
        if len(names) == count and len(set(names)) == count:
            return names
    return default_input_names(model, count)


def _program_dims(model: ExportedModule, names: list[str], dynamic_batch: bool,
                  dynamic_dims: Mapping[str, Mapping[int, str]] | None):
    """The dynamic dimensions asked for, less those the exported program fixed."""
    static = model.static_axes()
    if len(static) != len(names):
        return dynamic_batch, dynamic_dims
    fixed = dict(zip(names, static))
    if dynamic_batch and any(0 in axes for axes in static):
        dynamic_batch = False
    if dynamic_dims:
        dynamic_dims = {n: {a: d for a, d in dims.items() if a not in fixed.get(n, set())}
                        for n, dims in dynamic_dims.items()}
    return dynamic_batch, dynamic_dims


def verification_cases(spec: InputSpec, examples: Sequence[torch.Tensor], *, seed: int = 0) -> Cases:
    """The examples, fresh random inputs of the spec, and (dynamic batch) the same at batch sizes 1 and 3."""
    gen = torch.Generator().manual_seed(seed)
    cases = [("examples", list(examples)), ("random", spec.random_inputs(generator=gen))]
    if spec.has_dynamic_batch:
        for b in VERIFY_BATCH_SIZES:
            if b != spec.example_sizes.get("batch"):
                cases.append((f"random batch={b}", spec.random_inputs(generator=gen, sizes={"batch": b})))
    return cases


def calibrated_cases(spec: InputSpec, examples: tuple, calibration: Any, *, max_batches: int = 3) -> Cases:
    """Verification cases for static int8: the examples and calibration batches, not random inputs.

    A statically quantized model is only defined on the value range it was calibrated for; N(0, 1) noise
    outside that range is clipped by design and would fail any tolerance without saying anything about
    the engine. Slices of a calibration batch at batch sizes 1 and 3 keep the dynamic batch checked.
    """
    batches = calibration_batches(calibration, len(examples), spec=spec.with_device("cpu"))
    cases = [("examples", list(examples))]
    cases += [(f"calibration batch {i}", list(b)) for i, b in enumerate(batches[:max_batches])]
    first = batches[0]
    if spec.has_dynamic_batch and first[0].dim() and first[0].shape[0] > 1:
        for n in (1, 3):
            if n < first[0].shape[0]:
                cases.append((f"calibration slice batch={n}", [x[:n] for x in first]))
    return cases


def verification_inputs(spec: InputSpec, examples: tuple, precision: str, calibration: Any) -> Cases:
    """What an engine of ``precision`` is verified on: :func:`calibrated_cases` for calibrated int8, else
    :func:`verification_cases`."""
    if precision == "int8" and calibration is not None:
        return calibrated_cases(spec, examples, calibration)
    return verification_cases(spec, examples)
