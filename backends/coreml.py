"""``coreml``: coremltools conversion to an ML Program (``.mlpackage``), run by Core ML on macOS.

The model is converted from ``torch.export`` where coremltools' ExportedProgram frontend handles it, else
from a TorchScript trace. Dynamic dimensions become bounded ``ct.RangeDim`` s (flexible batch) where the
model allows, else the example's static shapes (said in the metadata). Packages can be built on any OS
(``motorpool.export(..., backend="coreml")``); only macOS can run them, so on Linux the backend is
"unsupported-platform" with ``can_export=True`` and running raises ``BackendUnavailable``.

Devices map to Core ML compute units: ``device="auto"`` -> ALL (Core ML picks per op; the engine reports
``all``), ``ane`` -> CPU_AND_NE, ``mps`` (the Apple GPU, named as in PyTorch) -> CPU_AND_GPU, ``cpu`` ->
CPU_ONLY. An ``ane``/``all`` engine takes host tensors; an ``mps`` one takes and returns tensors on ``mps``.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from motorpool import (Availability, Backend, BackendRecord, Capabilities, CompileError, CompileOptions, InputError,
                       Runner, UnsupportedError, hookimpl)
from motorpool.backend import distribution_version
from motorpool.hardware import detect
from motorpool.spec import InputSpec
from motorpool.torchutil import export_program, flatten_outputs, place
from motorpool.backends._export import quiet_loggers

ARTIFACT = "model.mlpackage"
MACOS_ONLY = "Core ML runs models only on macOS"
COMPUTE_UNITS = {"all": "ALL", "ane": "CPU_AND_NE", "mps": "CPU_AND_GPU", "cpu": "CPU_ONLY"}
#: what ``device="auto"`` means: let Core ML place each op on the CPU, GPU or Neural Engine
AUTO_DEVICE = "all"
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


def _native_runtime_error(ct) -> str | None:
    """Why this coremltools cannot run models here (its native Core ML bindings), or None if it can."""
    try:
        from coremltools import libcoremlpython  # noqa: F401 - present only in macOS wheels
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _convert(model: torch.nn.Module, examples: tuple, spec: InputSpec, options: CompileOptions, *,
             load: bool) -> tuple[Any, dict[str, Any]]:
    """Convert to an ML Program. Tries torch.export then a trace, flexible shapes then static ones.

    Returns the MLModel (loaded for running only when ``load``) and what was done, with every failed
    attempt's reason. Raises :class:`CompileError` naming each attempt's failure when none converts.
    """
    ct = _ct()
    extra = options.extra
    precision = {"fp16": ct.precision.FLOAT16, "int8": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}
    device = options.device.split(":")[0]
    kwargs: dict[str, Any] = {
        "convert_to": "mlprogram",
        "compute_precision": precision[options.precision],
        "compute_units": getattr(ct.ComputeUnit, COMPUTE_UNITS.get(device, "ALL")),
        "skip_model_load": not load,
    }
    if extra.get("minimum_deployment_target"):
        kwargs["minimum_deployment_target"] = getattr(ct.target, str(extra["minimum_deployment_target"]))
    ranges = dim_ranges(spec, extra) if spec.dynamic_dims else None
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
                attempts.append(f"{source}: {_first_line(exc)}")
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
                attempts.append(f"{source} ({'flexible' if flexible else 'static'} shapes): {_first_line(exc)}")
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


def _quantize_int8(mlmodel):
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


def _reference(model: torch.nn.Module, examples: tuple) -> list[torch.Tensor]:
    with torch.inference_mode():
        return flatten_outputs(model(*examples))


class CoreMLRunner(Runner):
    """Runs an MLModel through Core ML. Inputs and outputs are NumPy arrays in host memory."""

    native_inputs = "numpy"
    # coremltools documents no thread-safety for MLModel.predict; the engine serializes calls
    thread_safe = False

    def __init__(self, mlmodel, metadata: dict[str, Any], *, device: str, precision: str):
        self._model = mlmodel
        self._meta = metadata
        self.device = device
        self.precision = precision
        self._inputs = metadata["program"]["inputs"]
        self._outputs = [o["name"] for o in metadata["program"]["outputs"]]
        self._out_dtypes = metadata.get("output_dtypes", [])
        self.info = {"runtime": "Core ML", "compute_units": metadata.get("compute_units"),
                     "converted_from": metadata.get("converted_from"),
                     "flexible_shapes": metadata.get("flexible_shapes"),
                     "op_count": metadata["program"]["op_count"], "versions": metadata.get("versions", {})}

    def run(self, inputs: list[Any]) -> list[Any]:
        feed = {}
        for desc, x in zip(self._inputs, inputs):
            bounds = desc["ranges"] or [[d, d] for d in desc["shape"]]  # a static program takes one shape
            for axis, ((lo, hi), size) in enumerate(zip(bounds, x.shape)):
                if not lo <= size <= hi:
                    raise InputError(f"input {desc['name']!r}: dimension {axis} is {size}, this Core ML program "
                                     f"takes {lo}..{hi} (set options max_sizes when converting)",
                                     input=desc["name"], expected=(lo, hi), got=size)
            feed[desc["name"]] = np.ascontiguousarray(x, dtype=_np_dtype(desc["dtype"]))
        result = self._model.predict(feed)
        out = []
        for i, name in enumerate(self._outputs):
            value = np.asarray(result[name])
            if i < len(self._out_dtypes) and value.dtype.name != self._out_dtypes[i]:
                value = value.astype(self._out_dtypes[i])  # Core ML has no int64/bool outputs
            out.append(value)
        return out

    def save(self, directory: Path) -> dict[str, Any]:
        self._model.save(str(directory / ARTIFACT))
        return dict(self._meta)


def _np_dtype(coreml_dtype: str):
    return {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int32": np.int32,
            "int8": np.int8}.get(coreml_dtype, np.float32)


class CoreMLBackend(Backend):
    name = "coreml"
    extra = "coreml"
    description = "Core ML through coremltools (ML Program); runs on macOS, exports anywhere"
    capabilities = Capabilities(
        devices=("ane", "mps", "cpu"), precisions=frozenset({"fp32", "fp16", "int8"}), dynamic_batch=True,
        dynamic_shapes=True, thread_safe=False, serializable=True, compile_cost="medium",
        priority={"apple": 10, "*": 500}, native_inputs="numpy",
    )

    def availability(self) -> Availability:
        version = distribution_version("coremltools")
        if version is None:
            return Availability.not_installed("coremltools", "coreml")
        ct, error = _import()
        if ct is None:
            return Availability.import_failed("coremltools", error)
        versions = {"coremltools": version}
        if sys.platform != "darwin":
            return Availability.unsupported_platform(
                MACOS_ONLY, version=version, versions=versions, can_export=True,
                fix='build the package here with motorpool.export(model, inputs, backend="coreml", path=...) '
                    "and load it on a Mac (macOS 12 or later)")
        problem = _native_runtime_error(ct)
        if problem:
            return Availability.import_failed(
                "coremltools", RuntimeError(f"its Core ML bindings (libcoremlpython) failed to load: {problem}"),
                fix="install a coremltools wheel built for this macOS and Python (pip install -U coremltools)")
        devices = (["ane"] if detect().neural_engine else []) + ["mps", "cpu"]
        return Availability.ok(version=version, devices=devices, versions=versions)

    def _check_request(self, options: CompileOptions) -> None:
        device = options.device.split(":")[0]
        if device not in COMPUTE_UNITS:
            raise UnsupportedError(f"coreml targets {', '.join(COMPUTE_UNITS)}, not {options.device!r}",
                                   backend=self.name)
        if device == "ane" and options.precision == "fp32":
            # The Neural Engine computes in fp16: Core ML would quietly run an fp32 program elsewhere.
            raise UnsupportedError('the Neural Engine computes in fp16: use precision="fp16" (or "int8") on '
                                   'device="ane", or device="auto"/"mps"/"cpu" for fp32', backend=self.name)

    def default_device(self, availability: Availability) -> str:
        return AUTO_DEVICE

    def _build(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions, *, load: bool):
        self._check_request(options)
        model = place(model, "cpu")  # coremltools converts from host memory whatever the target
        examples = tuple(x.detach().cpu() for x in example_inputs)
        spec = options.spec.with_device("cpu")
        reference = _reference(model, examples)
        mlmodel, info = _convert(model, examples, spec, options, load=load)
        if options.precision == "int8":
            mlmodel = _quantize_int8(mlmodel)
            info["int8"] = "weights: per-channel linear symmetric (activations stay fp16)"
            if options.calibration is not None:
                info["int8_calibration"] = "not used: Core ML int8 here is weight-only and needs no data"
        described = describe_program(mlmodel)
        if options.precision == "int8":
            quantized = described["ops"].get("constexpr_affine_dequantize", 0) + \
                described["ops"].get("constexpr_blockwise_shift_scale", 0)
            if not quantized:
                raise UnsupportedError("int8: no weight of this model is large enough for Core ML's weight "
                                       "quantization (coremltools skips tensors under 2048 elements); use fp16",
                                       backend=self.name)
            info["int8_quantized_weights"] = quantized
        problems = check_program(described, spec, reference)
        if problems:
            raise CompileError("the converted Core ML program does not match the model: " + "; ".join(problems),
                               backend=self.name)
        metadata = {
            "file": ARTIFACT, "format": "mlprogram", "compute_units": COMPUTE_UNITS[options.device.split(":")[0]],
            "compute_precision": "FLOAT32" if options.precision == "fp32" else "FLOAT16", **info,
            "program": described, "output_dtypes": [str(r.dtype).removeprefix("torch.") for r in reference],
            "versions": {"coremltools": distribution_version("coremltools") or ""},
        }
        return mlmodel, metadata

    def compile(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions) -> Runner:
        mlmodel, metadata = self._build(model, example_inputs, options, load=True)
        if metadata.get("static_shapes"):
            # the engine's spec promises dynamic dimensions that this program does not take
            raise UnsupportedError("this model converts to Core ML only with the example's static shapes ("
                                   + "; ".join(metadata["failed_attempts"]) + "); compile with dynamic_batch=False",
                                   backend=self.name)
        return CoreMLRunner(mlmodel, metadata, device=options.device, precision=options.precision)

    def export(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions,
               directory: Path) -> dict[str, Any]:
        mlmodel, metadata = self._build(model, example_inputs, options, load=False)
        mlmodel.save(str(directory / ARTIFACT))
        return metadata

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        ct = _ct()
        device = options.device.split(":")[0]
        self._check_request(options)
        with _quiet_coremltools():
            mlmodel = ct.models.MLModel(str(directory / metadata.get("file", ARTIFACT)),
                                        compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[device]))
        metadata = dict(metadata, compute_units=COMPUTE_UNITS[device])
        return CoreMLRunner(mlmodel, metadata, device=options.device, precision=options.precision)


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(CoreMLBackend)]
