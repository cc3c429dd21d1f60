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

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motorpool.plugin import (Availability, Backend, BackendRecord, Capabilities, CompileError, CompileOptions,
                              InputError, Option, Runner, UnsupportedError, artifact_file, detect_hardware,
                              distribution_version, flatten_outputs, hookimpl, place)

from .convert import (COMPUTE_UNITS, _ct, _import, _quiet_coremltools, check_program, convert, describe_program,
                      quantize_int8)

ARTIFACT = "model.mlpackage"
MACOS_ONLY = "Core ML runs models only on macOS"
#: what ``device="auto"`` means: let Core ML place each op on the CPU, GPU or Neural Engine
AUTO_DEVICE = "all"


def _native_runtime_error(ct) -> str | None:
    """Why this coremltools cannot run models here (its native Core ML bindings), or None if it can."""
    try:
        from coremltools import libcoremlpython  # noqa: F401 - present only in macOS wheels
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


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
        self.dim_bounds = {k: (v["min"], v["max"]) for k, v in (metadata.get("shape_ranges") or {}).items()}

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
    options = (
        Option("minimum_deployment_target", str, None, "coremltools target (iOS16, macOS13, ...)"),
        Option("min_sizes", dict, None, "lower bound per dynamic dimension, e.g. {'batch': 1}"),
        Option("max_sizes", dict, None, "upper bound per dynamic dimension, e.g. {'batch': 256}"),
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
        devices = (["ane"] if detect_hardware().neural_engine else []) + ["mps", "cpu"]
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
        mlmodel, info = convert(model, examples, spec, options, load=load)
        if options.precision == "int8":
            mlmodel = quantize_int8(mlmodel)
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

    def code_in_artifact(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        return []  # a Core ML package is a protobuf program and weights: data

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        ct = _ct()
        device = options.device.split(":")[0]
        self._check_request(options)
        with _quiet_coremltools():
            mlmodel = ct.models.MLModel(str(artifact_file(directory, metadata.get("file", ARTIFACT))),
                                        compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[device]))
        metadata = dict(metadata, compute_units=COMPUTE_UNITS[device])
        return CoreMLRunner(mlmodel, metadata, device=options.device, precision=options.precision)


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(CoreMLBackend)]
