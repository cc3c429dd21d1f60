"""``tensorrt``: NVIDIA TensorRT through torch-tensorrt's dynamo frontend.

The model is captured with ``torch.export`` (the spec's named dynamic dimensions become ``Dim`` s with the
same bounds as the engine's optimization profile), then ``torch_tensorrt.compile(..., ir="dynamo")`` builds
TensorRT engines for the parts it can convert and leaves the rest to PyTorch. Each dynamic dimension gets a
min/opt/max range (``torch_tensorrt.Input``); calls outside it raise ``InputError`` before TensorRT sees them.

Precision: fp32 builds with TF32 off (``disable_tf32``); fp16/bf16 through ``enabled_precisions`` (or, on
torch-tensorrt versions that are always strongly typed, through its autocast); int8 needs calibration data
(NVIDIA ModelOpt post-training quantization), else "unsupported: needs calibration".

The returned module runs TensorRT blocks (``_run_on_acc_*`` submodules) and PyTorch blocks (``_run_on_gpu_*``);
both are counted in ``runner.info``, and a model split into many blocks is reported as likely slower than
eager. Saved with ``torch_tensorrt.save(..., output_format="exported_program")``, loaded with
``torch_tensorrt.load``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from motorpool.plugin import (Availability, Backend, BackendRecord, Capabilities, CompileError, CompileOptions,
                              InputError, InputSpec, Option, Runner, TorchRunner, UnsupportedError, artifact_file,
                              cache_root, calibration_batches, distribution_version, hookimpl, place, torch_dtype)

ARTIFACT = "model.ep"
#: submodule name prefixes torch-tensorrt's partitioners give TensorRT blocks and PyTorch blocks
TRT_BLOCK_PREFIX = "_run_on_acc"
TORCH_BLOCK_PREFIX = "_run_on_gpu"
#: upper bound of a dynamic dimension unless ``options={"max_sizes": {...}}``: TensorRT builds its
#: optimization profile for [min, max] and rejects sizes outside it
DEFAULT_MAX_SIZE = 64
#: more blocks than this (TensorRT and PyTorch together) and the report warns that the engine is split
MANY_BLOCKS = 3
DEFAULT_WORKSPACE = 1 << 30
NEEDS_GPU = "TensorRT needs an NVIDIA GPU with CUDA"


def _cuda_summary() -> str:
    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({'CUDA ' + cuda if cuda else 'a CPU-only build'})"


def tensorrt_availability() -> Availability:
    """Not installed / no CUDA device / CUDA present but the TensorRT libraries fail to load / ok."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return Availability.not_installed("torch-tensorrt", "tensorrt")
    version = distribution_version("torch-tensorrt")
    try:
        cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken driver is "no CUDA device", with its message
        cuda = False
    if not cuda:
        fix = ("run on a machine with an NVIDIA GPU and driver, and a CUDA build of torch "
               f"(this process has {_cuda_summary()})")
        return Availability.no_device(f"no CUDA device: torch.cuda.is_available() is False; {NEEDS_GPU}",
                                      fix=fix, version=version)
    try:
        import torch_tensorrt
    except Exception as exc:  # noqa: BLE001 - libnvinfer missing, CUDA/driver/torch version mismatch...
        return Availability.import_failed(
            "torch-tensorrt", exc,
            fix=(f"install the TensorRT runtime that torch-tensorrt {version or ''} was built for "
                 '(pip install "motorpool[tensorrt]" pulls the matching tensorrt wheel), make sure its libraries '
                 "(libnvinfer) are on the loader path, and that torch-tensorrt matches "
                 f"{_cuda_summary()}"))
    versions = {"torch_tensorrt": getattr(torch_tensorrt, "__version__", version or ""),
                "torch": torch.__version__, "cuda": torch.version.cuda or ""}
    trt_version = distribution_version("tensorrt") or distribution_version("tensorrt-cu12")
    if trt_version:
        versions["tensorrt"] = trt_version
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return Availability.ok(version=versions["torch_tensorrt"], devices=devices, versions=versions)


# -- shapes ------------------------------------------------------------------------------------------------

def dim_ranges(spec: InputSpec, options: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) for each named dynamic dimension of ``spec``.

    min defaults to 1, opt to the example's size (at least 2 when the range allows: ``torch.export``
    specializes a size-1 example), max to max(DEFAULT_MAX_SIZE, 2 x the example's size). The options
    ``min_sizes``, ``opt_sizes``, ``max_sizes`` (``{"batch": 256}``) override them.
    """
    given = {key: dict(options.get(key) or {}) for key in ("min_sizes", "opt_sizes", "max_sizes")}
    unknown = sorted(set().union(*given.values()) - spec.dynamic_dims)
    if unknown:
        raise InputError(f"options min_sizes/opt_sizes/max_sizes name {unknown}, which are not dynamic dimensions "
                         f"of the inputs {spec.describe()}; dynamic dimensions are "
                         f"{sorted(spec.dynamic_dims) or 'none'}", input="options",
                         expected=sorted(spec.dynamic_dims), got=unknown)
    out = {}
    for name in sorted(spec.dynamic_dims):
        example = int(spec.example_sizes.get(name, 1))
        lo = int(given["min_sizes"].get(name, 1))
        hi = int(given["max_sizes"].get(name, max(DEFAULT_MAX_SIZE, 2 * example)))
        opt = int(given["opt_sizes"].get(name, min(max(example, 2), hi)))
        if not 1 <= lo <= opt <= hi or not lo <= example <= hi:
            raise InputError(f"dynamic dimension {name!r}: need 1 <= min ({lo}) <= opt ({opt}) <= max ({hi}), "
                             f"and the example's size ({example}) within [min, max]", input="options",
                             expected="1 <= min <= opt <= max, min <= example <= max", got=(lo, opt, hi, example))
        out[name] = (lo, opt, hi)
    return out


def input_shapes(spec: InputSpec, ranges: dict[str, tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Per input: name, dtype, and the min/opt/max shapes torch_tensorrt.Input takes."""
    shapes = []
    for t in spec.inputs:
        shape = {k: tuple(d if isinstance(d, int) else ranges[d][i] for d in t.shape)
                 for i, k in enumerate(("min_shape", "opt_shape", "max_shape"))}
        shapes.append({"name": t.name, "dtype": t.dtype, **shape})
    return shapes


def _trt_inputs(torch_tensorrt, shapes: list[dict[str, Any]]) -> list[Any]:
    return [torch_tensorrt.Input(min_shape=s["min_shape"], opt_shape=s["opt_shape"], max_shape=s["max_shape"],
                                 dtype=torch_dtype(s["dtype"]), name=s["name"]) for s in shapes]


def _export(model: torch.nn.Module, spec: InputSpec, ranges: dict[str, tuple[int, int, int]], device: str,
            examples: tuple):
    """``torch.export`` with one ``Dim`` per named dimension (shared across inputs, bounded like the profile)."""
    from torch.export import Dim, export

    dims = {name: Dim(name, min=lo, max=hi) for name, (lo, _, hi) in ranges.items()}
    opt = {name: o for name, (_, o, _) in ranges.items()}
    inputs = tuple(spec.random_inputs(sizes=opt, device=device)) if ranges else examples
    dynamic = tuple({axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} or None
                    for t in spec.inputs)
    return export(model, inputs, dynamic_shapes=dynamic if ranges else None), inputs, dynamic


# -- blocks ------------------------------------------------------------------------------------------------

def count_blocks(module: torch.nn.Module) -> dict[str, Any]:
    """How torch-tensorrt partitioned the model: TensorRT blocks, PyTorch blocks, and their order."""
    order = [name for name, _ in module.named_children()
             if name.startswith(TRT_BLOCK_PREFIX) or name.startswith(TORCH_BLOCK_PREFIX)]
    trt = sum(1 for n in order if n.startswith(TRT_BLOCK_PREFIX))
    return {"tensorrt_blocks": trt, "pytorch_blocks": len(order) - trt, "blocks": order}


def split_warning(blocks: dict[str, Any]) -> str | None:
    """A sentence for the report when the engine is split into many blocks, else None."""
    total = blocks["tensorrt_blocks"] + blocks["pytorch_blocks"]
    if total <= MANY_BLOCKS:
        return None
    return (f"the model is split into {total} blocks ({blocks['tensorrt_blocks']} TensorRT, "
            f"{blocks['pytorch_blocks']} PyTorch): every switch between them costs a copy and a synchronisation, "
            "so such an engine is often slower than eager PyTorch; benchmark it against eager, and see which ops "
            "fall back (raise min_block_size, or rewrite them) before relying on it")


# -- precision ---------------------------------------------------------------------------------------------

def precision_settings(precision: str, accepted: set[str]) -> dict[str, Any]:
    """The compile settings for ``precision`` that this torch-tensorrt's ``dynamo.compile`` accepts.

    Versions up to 2.9 take ``enabled_precisions`` (with weak typing); later ones are always strongly
    typed and lower precision comes from their autocast. fp32 always keeps TF32 off.
    """
    low = {"fp16": torch.float16, "bf16": torch.bfloat16}
    settings: dict[str, Any] = {"disable_tf32": True}
    if "enabled_precisions" in accepted:
        if precision in low:
            settings["enabled_precisions"] = {torch.float32, low[precision]}
        elif precision == "int8":
            settings["enabled_precisions"] = {torch.float32, torch.float16, torch.int8}
        else:
            settings["enabled_precisions"] = {torch.float32}
        if "use_explicit_typing" in accepted and precision != "int8":
            settings["use_explicit_typing"] = False  # weak typing: enabled_precisions decides
    elif precision in low:
        if "enable_autocast" not in accepted:
            raise UnsupportedError(f"this torch-tensorrt takes neither enabled_precisions nor enable_autocast; "
                                   f"cannot build {precision}", backend="tensorrt")
        settings.update(enable_autocast=True, autocast_low_precision_type=low[precision])
    if precision != "fp32":
        settings.pop("disable_tf32")  # TF32 is only a question for fp32 layers; leave TensorRT's default
    return settings


def _compile_parameters(torch_tensorrt) -> set[str]:
    try:
        return set(inspect.signature(torch_tensorrt.dynamo.compile).parameters)
    except (TypeError, ValueError, AttributeError):
        return set()


# -- int8 ----------------------------------------------------------------------------------------------------

def _require_calibration(calibration) -> None:
    if calibration is None:
        raise UnsupportedError("unsupported: needs calibration (TensorRT int8 calibrates activation ranges on "
                               "data; pass calibration=[batch, ...])", backend="tensorrt")


def _quantize_int8(model: torch.nn.Module, calibration, n_inputs: int, device: str) -> tuple[torch.nn.Module, Any]:
    """NVIDIA ModelOpt post-training int8 quantization, calibrated on ``calibration``.

    Returns the fake-quantized model and the context manager to export it under.
    """
    _require_calibration(calibration)
    batches = calibration_batches(calibration, n_inputs)
    if importlib.util.find_spec("modelopt") is None:
        raise UnsupportedError('int8 with torch-tensorrt quantizes through NVIDIA ModelOpt, which is not installed: '
                               'pip install "nvidia-modelopt[torch]"', backend="tensorrt")
    import copy

    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.utils import export_torch_mode

    quantized = copy.deepcopy(model)

    def forward_loop(m):
        with torch.no_grad():
            for batch in batches:
                m(*[x.to(device) for x in batch])

    mtq.quantize(quantized, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
    return quantized, export_torch_mode()


# -- runner ----------------------------------------------------------------------------------------------

class TensorRTRunner(TorchRunner, Runner):
    """Runs the torch-tensorrt module; checks sizes against the optimization profile first."""

    def __init__(self, module, *, device: str, precision: str, shapes: list[dict[str, Any]], info: dict[str, Any],
                 save_inputs=None, dynamic_shapes=None, source_file: Path | None = None):
        # one TensorRT execution context per engine: concurrent calls must not share it
        self._init_torch(module, device=device, precision=precision, thread_safe=False, info=info)
        self._shapes = shapes
        self._save_inputs = save_inputs
        self._dynamic_shapes = dynamic_shapes
        self._source_file = source_file  # a loaded engine saves by copying what it was loaded from

    def run(self, inputs: list[Any]) -> list[Any]:
        for s, x in zip(self._shapes, inputs):
            for axis, (lo, hi, size) in enumerate(zip(s["min_shape"], s["max_shape"], x.shape)):
                if not lo <= size <= hi:
                    raise InputError(f"input {s['name']!r}: dimension {axis} is {size}; this TensorRT engine was "
                                     f"built for {lo}..{hi} (compile with options max_sizes/min_sizes to widen it)",
                                     input=s["name"], expected=(lo, hi), got=size)
        return super().run(inputs)

    def save(self, directory: Path) -> dict[str, Any]:
        import torch_tensorrt

        path = directory / ARTIFACT
        metadata = {"file": ARTIFACT, "format": "torch_tensorrt exported_program",
                    "shapes": _jsonable_shapes(self._shapes),
                    "blocks": {k: self.info.get(k) for k in ("tensorrt_blocks", "pytorch_blocks", "blocks")},
                    "settings": self.info.get("settings", {})}
        if self._source_file is not None:
            shutil.copy2(self._source_file, path)
            return metadata
        params = set(inspect.signature(torch_tensorrt.save).parameters)
        kwargs: dict[str, Any] = {"output_format": "exported_program"}
        inputs = list(self._save_inputs or [])
        kwargs["arg_inputs" if "arg_inputs" in params else "inputs"] = inputs
        if self._dynamic_shapes is not None and "dynamic_shapes" in params:
            kwargs["dynamic_shapes"] = self._dynamic_shapes
        torch_tensorrt.save(self.module, str(path), **kwargs)
        return metadata


def _jsonable_shapes(shapes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()} for s in shapes]


class TensorRTBackend(Backend):
    name = "tensorrt"
    extra = "tensorrt"
    description = "NVIDIA TensorRT through torch-tensorrt (dynamo)"
    capabilities = Capabilities(
        devices=("cuda",), precisions=frozenset({"fp32", "fp16", "bf16", "int8"}), dynamic_batch=True,
        dynamic_shapes=True, thread_safe=False, serializable=True, compile_cost="high",
        priority={"nvidia": 10, "*": 1000}, int8_modes=("static",),
    )
    options = (
        Option("min_block_size", int, 5, "smallest subgraph TensorRT takes"),
        Option("workspace_size", int, DEFAULT_WORKSPACE, "builder workspace in bytes"),
        Option("timing_cache_path", str, None, "TensorRT's timing cache (default under motorpool's cache root)"),
        Option("optimization_level", int, None, "builder optimization level 0-5"),
        Option("torch_executed_ops", (list, tuple, set), None, "operators left to PyTorch"),
        Option("min_sizes", dict, None, "lower bound per dynamic dimension, e.g. {'batch': 1}"),
        Option("opt_sizes", dict, None, "size to optimize for per dynamic dimension"),
        Option("max_sizes", dict, None, "upper bound per dynamic dimension, e.g. {'batch': 64}"),
    )

    def availability(self) -> Availability:
        return tensorrt_availability()

    def compile(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions) -> Runner:
        if options.precision == "int8":
            _require_calibration(options.calibration)  # before any GPU work: the answer does not depend on it
        import torch_tensorrt

        device = options.device if options.device.startswith("cuda") else "cuda:0"
        spec = options.spec
        extra = options.extra
        ranges = dim_ranges(spec, extra)
        shapes = input_shapes(spec, ranges)
        accepted = _compile_parameters(torch_tensorrt)
        settings = precision_settings(options.precision, accepted)
        settings.update({
            "min_block_size": int(extra.get("min_block_size", 5)),
            "workspace_size": int(extra.get("workspace_size", DEFAULT_WORKSPACE)),
            "timing_cache_path": str(extra.get("timing_cache_path") or _default_timing_cache()),
            "device": torch_tensorrt.Device(device),
        })
        os.makedirs(os.path.dirname(settings["timing_cache_path"]), exist_ok=True)
        if extra.get("optimization_level") is not None:
            settings["optimization_level"] = int(extra["optimization_level"])
        if extra.get("torch_executed_ops"):
            settings["torch_executed_ops"] = set(extra["torch_executed_ops"])
        dropped = sorted(k for k in settings if accepted and k not in accepted)
        for key in dropped:  # older/newer versions name settings differently; say which were not applied
            settings.pop(key)
        model = place(model, device)
        export_context = contextlib.nullcontext()
        if options.precision == "int8":
            model, export_context = _quantize_int8(model, options.calibration, len(spec.inputs), device)
        try:
            with export_context, torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program, save_inputs, dynamic = _export(model, spec, ranges, device, example_inputs)
                module = torch_tensorrt.compile(program, ir="dynamo", inputs=_trt_inputs(torch_tensorrt, shapes),
                                                **settings)
        except (UnsupportedError, InputError):
            raise
        except Exception as exc:
            raise CompileError(f"torch-tensorrt failed to compile the model: {type(exc).__name__}: "
                               f"{str(exc)[:2000]}", backend=self.name) from exc
        blocks = count_blocks(module)
        if blocks["tensorrt_blocks"] == 0:
            raise CompileError("TensorRT converted no part of the model (every op fell back to PyTorch); the "
                               "engine would be eager PyTorch under another name. Lower min_block_size or check "
                               "which ops torch-tensorrt supports", backend=self.name)
        info: dict[str, Any] = {
            "runtime": "TensorRT (torch-tensorrt dynamo)", **blocks,
            "shape_ranges": {k: {"min": v[0], "opt": v[1], "max": v[2]} for k, v in ranges.items()},
            "settings": _describe_settings(settings), "settings_not_supported_by_this_version": dropped,
        }
        warning = split_warning(blocks)
        if warning:
            info["warnings"] = [warning]
            warnings.warn(f"tensorrt: {warning}", stacklevel=2)
        runner = TensorRTRunner(module, device=device, precision=options.precision, shapes=shapes, info=info,
                                save_inputs=list(save_inputs), dynamic_shapes=dynamic)
        runner.dim_bounds = {k: (lo, hi) for k, (lo, _, hi) in ranges.items()}
        return runner

    def code_in_artifact(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        name = Path(str(metadata.get("file", ARTIFACT))).name
        return [f"{name} holds serialized TensorRT engines (native kernels and plugins), which torch-tensorrt's "
                "loader deserializes and runs"]

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        import torch_tensorrt

        path = str(artifact_file(directory, metadata.get("file", ARTIFACT)))
        device = options.device if options.device.startswith("cuda") else "cuda:0"
        with torch.cuda.device(torch.device(device)):  # engines deserialize onto the current device
            program = torch_tensorrt.load(path)
        module = program.module() if hasattr(program, "module") else program
        shapes = [{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()} for s in metadata["shapes"]]
        info = {"runtime": "TensorRT (torch-tensorrt dynamo)", **(metadata.get("blocks") or {}),
                "settings": metadata.get("settings", {})}
        return TensorRTRunner(module, device=device, precision=options.precision, shapes=shapes, info=info,
                              source_file=Path(path))


def _default_timing_cache() -> str:
    """A per-user timing cache beside motorpool's engine cache: TensorRT reuses kernel timings across
    builds, which cuts rebuild time; it is keyed by GPU inside TensorRT, so one file serves every engine."""
    return str(cache_root("tensorrt", create=True) / "timing_cache.bin")


def _describe_settings(settings: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in settings.items():
        if isinstance(value, (set, frozenset)):
            out[key] = sorted(str(v).removeprefix("torch.") for v in value)
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        else:
            out[key] = str(value)
    return out


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(TensorRTBackend)]
