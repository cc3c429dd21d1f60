"""Converting a torch model to a Core ML ML Program: the frontends tried (torch.export, then a trace), flexible
shapes as bounded ``ct.RangeDim`` s, weight-only int8, and the checks that can be made without running it."""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from motorpool.plugin import CompileError, CompileOptions, InputError, InputSpec, export_program, first_line, quiet_loggers

COMPUTE_UNITS = {"all": "ALL", "ane": "CPU_AND_NE", "mps": "CPU_AND_GPU", "cpu": "CPU_ONLY"}
#: upper bound of a dynamic dimension unless ``options={"max_sizes": {...}}`` says otherwise: ML Programs
#: need a finite bound, and a tight one lets Core ML plan memory (and the Neural Engine) better
DEFAULT_MAX_SIZE = 64


@contextmanager
def _quiet_coremltools() -> Iterator[None]:
    """coremltools logs a warning per missing macOS-only native proxy at import on Linux (and the torchao
    it imports, one per CUDA kernel library it cannot load); those absences are what availability reports,
    so the noise is held back."""
    with quiet_loggers("coremltools", "torchao", "torch.utils._pytree"):
        yield


@functools.lru_cache(maxsize=1)
def _import() -> tuple[Any, BaseException | None]:
    """Import coremltools once per process (it takes seconds). Returns (module, None) or (None, error)."""
    try:
        with _quiet_coremltools():
            import coremltools as ct
        return ct, None
    except Exception as exc:  # a broken install is an answer, never a crash
        return None, exc


def _ct():
    ct, error = _import()
    if ct is None:
        raise CompileError(f"coremltools failed to import: {type(error).__name__}: {error}", backend="coreml")
    return ct


def dim_ranges(spec: InputSpec, options: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """(lower, default, upper) for each named dynamic dimension of ``spec``.

    Lower bounds default to 1, upper bounds to max(DEFAULT_MAX_SIZE, 2 x the example's size); the
    ``min_sizes``/``max_sizes`` options (``{"batch": 256}``) override them.
    """
    mins = dict(options.get("min_sizes") or {})
    maxs = dict(options.get("max_sizes") or {})
    unknown = sorted((set(mins) | set(maxs)) - spec.dynamic_dims)
    if unknown:
        raise InputError(f"options min_sizes/max_sizes name {unknown}, which are not dynamic dimensions of the "
                         f"inputs {spec.describe()}; dynamic dimensions are {sorted(spec.dynamic_dims) or 'none'}",
                         input="options", expected=sorted(spec.dynamic_dims), got=unknown)
    out = {}
    for name in sorted(spec.dynamic_dims):
        example = int(spec.example_sizes.get(name, 1))
        lo = int(mins.get(name, 1))
        hi = int(maxs.get(name, max(DEFAULT_MAX_SIZE, 2 * example)))
        if not 1 <= lo <= example <= hi:
            raise InputError(f"dynamic dimension {name!r}: need 1 <= min ({lo}) <= example size ({example}) <= max "
                             f"({hi})", input="options", expected="1 <= min <= example <= max", got=(lo, example, hi))
        out[name] = (lo, example, hi)
    return out


def _coreml_inputs(ct, spec: InputSpec, ranges: dict[str, tuple[int, int, int]] | None):
    """``ct.TensorType`` s for the spec: one shared ``RangeDim`` object per named dimension (Core ML ties
    dimensions by the object's symbol; named symbols are process-global in coremltools, so they stay
    anonymous), or the example's static shapes when ``ranges`` is None."""
    dims = {name: ct.RangeDim(lower_bound=lo, upper_bound=hi, default=ex)
            for name, (lo, ex, hi) in (ranges or {}).items()}
    inputs = []
    for t in spec.inputs:
        shape = [d if isinstance(d, int) else (dims[d] if ranges is not None else spec.example_sizes[d])
                 for d in t.shape]
        inputs.append(ct.TensorType(name=t.name, shape=ct.Shape(shape) if ranges is not None else tuple(shape),
                                    dtype=_input_dtype(t)))
    return inputs


def _input_dtype(t) -> type:
    """Core ML takes float16/float32/int32 arrays: half stays half, other floats are fed as float32 and
    integers and bools as int32 (the runner casts)."""
    if t.dtype == "float16":
        return np.float16
    return np.float32 if t.is_floating else np.int32


def _convert_kwargs(ct, options: CompileOptions, *, load: bool) -> dict[str, Any]:
    """What ``ct.convert`` is told besides the program and its inputs."""
    precision = {"fp16": ct.precision.FLOAT16, "int8": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}
    device = options.device.split(":")[0]
    kwargs: dict[str, Any] = {
        "convert_to": "mlprogram",
        "compute_precision": precision[options.precision],
        "compute_units": getattr(ct.ComputeUnit, COMPUTE_UNITS.get(device, "ALL")),
        "skip_model_load": not load,
    }
    if options.extra.get("minimum_deployment_target"):
        kwargs["minimum_deployment_target"] = getattr(ct.target, str(options.extra["minimum_deployment_target"]))
    return kwargs


def convert(model: torch.nn.Module, examples: tuple, spec: InputSpec, options: CompileOptions, *,
             load: bool) -> tuple[Any, dict[str, Any]]:
    """Convert to an ML Program. Tries torch.export then a trace, flexible shapes then static ones.

    Returns the MLModel (loaded for running only when ``load``) and what was done, with every failed
    attempt's reason. Raises :class:`CompileError` naming each attempt's failure when none converts.
    """
    ct = _ct()
    kwargs = _convert_kwargs(ct, options, load=load)
    ranges = dim_ranges(spec, options.extra) if spec.dynamic_dims else None
    attempts: list[str] = []

    def export_source():
        # torch.export and the tracer warn about what motorpool checks itself (verification)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return export_program(model, spec, device="cpu").run_decompositions({})

    def trace_source():
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.jit.trace(model, examples, check_trace=False, strict=False)

    programs: dict[str, Any] = {}

    def program_from(source: str, make):
        if source not in programs:
            try:
                programs[source] = make()
            except Exception as exc:  # noqa: BLE001 - the other source may still work
                programs[source] = None
                attempts.append(f"{source}: {first_line(exc)}")
        return programs[source]

    # Flexible shapes matter more to the user than which frontend produced them, so both frontends are
    # tried with flexible shapes before either falls back to the example's static shapes.
    for flexible in ([True, False] if ranges is not None else [False]):
        for source, make in (("torch.export", export_source), ("torch.jit.trace", trace_source)):
            program = program_from(source, make)
            if program is None:
                continue
            inputs = _coreml_inputs(ct, spec, ranges if flexible else None)
            try:
                with _quiet_coremltools(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mlmodel = ct.convert(program, inputs=inputs, **kwargs)
            except Exception as exc:  # noqa: BLE001 - recorded; the next attempt may work
                attempts.append(f"{source} ({'flexible' if flexible else 'static'} shapes): {first_line(exc)}")
                continue
            if flexible and _outputs_static(mlmodel):
                # A trace can bake the example's sizes into reshapes; then no output follows the input's
                # dynamic dimensions and the "flexible" program only works at the example's shape.
                attempts.append(f"{source} (flexible shapes): every output has a static shape, so the program "
                                "does not follow the inputs' dynamic dimensions")
                continue
            info = {"converted_from": source, "flexible_shapes": flexible,
                    "static_shapes": ranges is not None and not flexible,
                    "shape_ranges": {k: {"min": v[0], "default": v[1], "max": v[2]} for k, v in ranges.items()}
                    if flexible and ranges else {}, "failed_attempts": attempts}
            return mlmodel, info
    raise CompileError("coremltools could not convert the model: " + "; ".join(attempts), backend="coreml")


def _outputs_static(mlmodel) -> bool:
    program = getattr(mlmodel, "_mil_program", None)
    if program is None:
        return False  # cannot tell; verification on the Mac will
    return all(isinstance(d, int) for v in program.functions["main"].outputs for d in v.shape)


def quantize_int8(mlmodel):
    """Weight-only int8 (per-channel linear symmetric): runs anywhere coremltools converts, needs no data."""
    ct = _ct()
    config = ct.optimize.coreml.OptimizationConfig(
        global_config=ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
    with _quiet_coremltools(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.optimize.coreml.linear_quantize_weights(mlmodel, config=config)


def _count_ops(block, counts: Counter) -> None:
    for op in block.operations:
        counts[op.type] += 1
        for inner in op.blocks:
            _count_ops(inner, counts)


def describe_program(mlmodel) -> dict[str, Any]:
    """What can be read from a converted ML Program without running it: inputs, outputs and ops."""
    ct = _ct()
    spec = mlmodel.get_spec()
    dtype_names = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name

    def feature(f) -> dict[str, Any]:
        arr = f.type.multiArrayType
        ranges = [[r.lowerBound, r.upperBound] for r in arr.shapeRange.sizeRanges]
        return {"name": f.name, "dtype": dtype_names(arr.dataType).lower(), "shape": list(arr.shape),
                "ranges": ranges}

    counts: Counter = Counter()
    main = spec.mlProgram.functions["main"]
    _count_ops(main.block_specializations[main.opset], counts)
    described = {"inputs": [feature(f) for f in spec.description.input],
                 "outputs": [feature(f) for f in spec.description.output],
                 "op_count": sum(counts.values()), "ops": dict(sorted(counts.items())),
                 "opset": main.opset, "specification_version": spec.specificationVersion}
    program = getattr(mlmodel, "_mil_program", None)  # the MIL program knows output shapes; the spec does not
    if program is not None:
        described["output_shapes"] = [[d if isinstance(d, int) else str(d) for d in v.shape]
                                      for v in program.functions["main"].outputs]
    return described


def check_program(described: dict[str, Any], spec: InputSpec, reference: list[torch.Tensor]) -> list[str]:
    """Differences between the converted program's interface and the model's; empty when it matches."""
    problems = []
    names = [i["name"] for i in described["inputs"]]
    if names != spec.names:
        problems.append(f"inputs are {names}, expected {spec.names}")
    for t, f in zip(spec.inputs, described["inputs"]):
        if len(f["shape"]) != t.rank:
            problems.append(f"input {t.name!r} has rank {len(f['shape'])}, expected {t.rank}")
    if len(described["outputs"]) != len(reference):
        problems.append(f"{len(described['outputs'])} outputs, the model returns {len(reference)}")
    for i, (shape, ref) in enumerate(zip(described.get("output_shapes", []), reference)):
        if len(shape) != ref.dim():
            problems.append(f"output {i} has rank {len(shape)}, the model's has {ref.dim()}")
        elif any(isinstance(d, int) and d != r for d, r in zip(shape, ref.shape)):
            problems.append(f"output {i} has shape {shape}, the model's is {list(ref.shape)}")
    if described["op_count"] == 0:
        problems.append("the program has no operations")
    return problems
