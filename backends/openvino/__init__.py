"""``openvino``: convert with ``openvino.convert_model`` and run with OpenVINO Runtime.

Conversion goes through ``torch.export`` (an ExportedProgram) first and the older TorchScript tracing
path (``convert_model(model, example_input=...)``) second; both reasons are in ``info``. Precision is
always asked for explicitly with ``INFERENCE_PRECISION_HINT``: on CPUs with AMX or AVX512-BF16 OpenVINO
otherwise runs fp32 models in bf16. Each calling thread gets its own infer request, so concurrent calls
are safe. Saved as OpenVINO IR (``model.xml`` + ``model.bin``, weights kept in full precision); loads
compile from the IR with a model cache directory, so the second load of an engine skips compilation.

Backend options (``motorpool.compile(..., options={...})``):
``ov_device`` (OpenVINO's own device name: "CPU", "GPU.0", "NPU", "AUTO"; default the one ``device``
names: cpu -> CPU, xpu:N (an Intel GPU) -> GPU.N), ``performance_hint`` ("LATENCY" default,
"THROUGHPUT"), ``num_streams``, ``num_threads``,
``cache_dir`` (model cache; ``False`` turns it off), ``converters`` (order to try, default
``["export", "tracing"]``), ``model_type`` ("transformer" tells NNCF how to quantize), ``int8_mode``
("static" with calibration, "weights" for weight-only int8 when no calibration set is given),
``inference_precision`` (the float precision of what int8 leaves in float, default f32).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motorpool.plugin import (ArtifactError, Availability, Backend, BackendRecord, Capabilities, CompileError,
                              CompileOptions, FlatOutputs, Option, Runner, TrustWarning, UnsupportedError,
                              artifact_file, distribution_version, export_program, first_line, hookimpl,
                              probe_package, quiet_exporters, usable_cache_dir)

from .int8 import quantize
from .profiling import summarize_openvino_counters

NAME = "openvino"
EXTRA = "openvino"
XML, BIN = "model.xml", "model.bin"
CONVERTERS = ("export", "tracing")
#: motorpool precision -> OpenVINO inference precision hint
PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_core_lock = threading.Lock()
_core = None


def ov_core():
    """One ``openvino.Core`` per process (creating one loads every device plugin)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


#: OpenVINO device kind <-> motorpool (torch) device kind; Intel GPUs are torch's "xpu". NPU and the
#: virtual devices (AUTO, HETERO) have no torch device: ask for them with options={"ov_device": ...}
_KINDS = {"CPU": "cpu", "GPU": "xpu"}


def to_ov_device(device: str) -> str:
    """motorpool device ("cpu", "xpu:1") -> OpenVINO device ("CPU", "GPU.1")."""
    kind, _, index = device.partition(":")
    ov_kind = {v: k for k, v in _KINDS.items()}.get(kind, kind.upper())
    return ov_kind + (f".{index}" if index else "")


def from_ov_device(name: str) -> str | None:
    kind, _, index = name.partition(".")
    ours = _KINDS.get(kind)
    return None if ours is None else ours + (f":{index}" if index else "")


class OpenVINORunner(Runner):
    """A compiled OpenVINO model over NumPy arrays, one infer request per calling thread."""

    native_inputs = "numpy"
    thread_safe = True

    def __init__(self, compiled, *, device: str, precision: str, info: dict[str, Any], config: dict[str, Any],
                 model=None, files: Path | None = None):
        self.compiled = compiled
        self.device = device
        self.precision = precision
        self.info = info
        self._config = config
        self._model = model  # the ov.Model to save (compiled here) ...
        self._files = files  # ... or the IR files it was loaded from
        self._local = threading.local()
        import openvino as ov

        self._tensor = ov.Tensor
        self._outputs = range(len(compiled.outputs))
        if files is not None:
            weakref.finalize(self, shutil.rmtree, str(files), True)

    def _request(self):
        req = self.compiled.create_infer_request()
        self._local.request = req
        return req

    def run(self, inputs: list[Any]) -> list[Any]:
        try:
            req = self._local.request
        except AttributeError:  # this thread's first call
            req = self._request()
        # Tensors set by index and read back by index: about 2.5x less Python-side work per call than
        # InferRequest.infer(list), which builds a dict and an OVDict. Inputs are shared, not copied
        # (ov.Tensor needs C order); outputs are copied out, since the request reuses its memory.
        tensor = self._tensor
        # ov.Tensor(shared_memory=True) reads the array's memory when infer() runs, and keeps no reference to
        # it: a C-order copy made here must stay alive until then (a temporary is freed at once, and infer()
        # reads freed memory). Byte order too: OpenVINO reads native-endian bytes.
        keep = [a if a.flags.c_contiguous and a.dtype.isnative else
                np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")) for a in inputs]
        for i, a in enumerate(keep):
            req.set_input_tensor(i, tensor(a, shared_memory=True))
        req.infer()
        return [req.get_output_tensor(i).data.copy() for i in self._outputs]

    profiler_name = "OpenVINO per-layer counters (PERF_COUNT)"

    def profile_operators(self, inputs: list[Any], *, top: int = 10, calls: int = 5) -> list[Any]:
        """OpenVINO's per-layer counters, on a twin compiled with PERF_COUNT (see ``Runner.profile_operators``);
        this engine's compiled model is left untouched."""
        model = self._model if self._model is not None else str(self._files / XML)
        config = {k: v for k, v in self._config.items() if k != "CACHE_DIR"}
        ov_device = str(self.info.get("ov_device") or to_ov_device(self.device))
        request = _compile(model, ov_device, {**config, "PERF_COUNT": True}).create_infer_request()
        request.infer(inputs)  # first-run allocations and reorders stay out of the table
        runs = []
        for _ in range(calls):
            request.infer(inputs, share_inputs=True)
            runs.append(request.profiling_info)
        return summarize_openvino_counters(runs, top=top)

    def save(self, directory: Path) -> dict[str, Any]:
        if self._model is not None:
            import openvino as ov

            # compress_to_fp16 defaults to True: it would halve the weights of an fp32 engine on disk
            ov.save_model(self._model, str(directory / XML), compress_to_fp16=False)
        else:
            for name in (XML, BIN):
                shutil.copy2(self._files / name, directory / name)
        return {"xml": XML, "bin": BIN, "config": {k: v for k, v in self._config.items() if k != "CACHE_DIR"},
                **_kept_info(self.info)}


class OpenVINOBackend(Backend):
    name = NAME
    extra = EXTRA
    description = "openvino.convert_model + OpenVINO Runtime (CPU, GPU, NPU); NNCF for int8"
    capabilities = Capabilities(
        devices=("cpu", "xpu"), precisions=frozenset({"fp32", "fp16", "bf16", "int8"}),
        dynamic_batch=True, dynamic_shapes=True, thread_safe=True, serializable=True, compile_cost="low",
        # measured (bench_real, issue 17): on CPUs with AVX-512 it leads static attention models by 1.09-2.2x
        # (Zen 5 and Sapphire Rapids alike); bf16 runs on AMX / avx512_bf16 natively; the rest is close
        priority={"cpu": 20, "cpu/convolution": 15, "cpu/attention": 20, "cpu+avx512f/attention": 10,
                  "cpu/attention/dynamic": 20, "cpu/attention/causal": 20, "cpu+avx512_bf16/bf16": 10,
                  "cpu+amx_bf16/bf16": 5, "*": 70}, native_inputs="numpy",
        int8_modes=("static",),
    )
    options = (
        Option("ov_device", str, None, "an OpenVINO device name (CPU, GPU.0, NPU, AUTO...) instead of the mapping"),
        Option("cache_dir", (str, Path, bool), None, "OpenVINO's model cache (False: off); default under "
               "motorpool's cache root"),
        Option("converters", (list, tuple), CONVERTERS, "conversions to try in order"),
        Option("inference_precision", str, None, "INFERENCE_PRECISION_HINT for an int8 model"),
        Option("performance_hint", str, "LATENCY", "PERFORMANCE_HINT", choices=PERFORMANCE_HINTS
               + tuple(h.lower() for h in PERFORMANCE_HINTS)),
        Option("num_streams", (int, str), None, "NUM_STREAMS"),
        Option("num_threads", int, None, "INFERENCE_NUM_THREADS; also when loading", load=True),
        Option("int8", str, None, "how int8 is made: static (NNCF, calibrated) or weights (weight-only; the default "
               "without calibration)", choices=("auto", "static", "weights")),
        Option("model_type", str, None, "NNCF's model type (transformer)"),
    )

    def availability(self) -> Availability:
        ov, problem = probe_package("openvino", "openvino", EXTRA)
        if problem is not None:
            return problem
        try:
            ov_devices = list(ov_core().available_devices)
        except Exception as exc:  # noqa: BLE001 - a plugin that cannot load is an answer, not a crash
            return Availability.import_failed("openvino", exc)
        versions = {"openvino": ov.__version__.split("-")[0]}
        nncf_version = distribution_version("nncf")
        if nncf_version:
            versions["nncf"] = nncf_version
        devices = [d for d in map(from_ov_device, ov_devices) if d]
        if "cpu" in devices:  # host memory first: it is what the engine's inputs live in
            devices.remove("cpu")
            devices.insert(0, "cpu")
        if not devices:
            return Availability.no_device(f"OpenVINO sees no device it can run on (it lists {ov_devices})",
                                          version=versions["openvino"], versions=versions)
        return Availability.ok(version=versions["openvino"], devices=devices, versions=versions,
                               reason="OpenVINO devices: " + ", ".join(ov_devices))

    def compile(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions) -> Runner:
        import openvino as ov

        extra = options.extra
        ov_device = str(extra.get("ov_device") or to_ov_device(options.device))
        config = compile_config(options.precision, extra, ov_device)
        spec = options.spec.with_device("cpu")
        examples = tuple(x.cpu() for x in example_inputs)
        converters = tuple(extra.get("converters") or CONVERTERS)
        ov_model, converter, attempts = convert(model, examples, spec, converters)
        info: dict[str, Any] = {"runtime": "OpenVINO " + ov.__version__.split("-")[0], "converter": converter,
                                "convert_attempts": attempts, "ov_device": ov_device}
        if options.precision == "int8":
            ov_model, int8_info = quantize(ov_model, spec, options.calibration, extra)
            info.update(int8_info)
        cache_dir = extra.get("cache_dir")
        if cache_dir:
            config["CACHE_DIR"] = str(cache_dir)
        compiled = _compile(ov_model, ov_device, config)
        info.update(_compiled_info(compiled, config))
        return OpenVINORunner(compiled, device=options.device, precision=options.precision, info=info,
                              config=config, model=ov_model)

    def code_in_artifact(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        return []  # OpenVINO IR: an XML graph of standard operations and raw weights, parsed: data

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        import openvino as ov

        config = _stored_config(metadata.get("config", {}), directory)
        ov_device = str(metadata.get("ov_device") or to_ov_device(options.device))
        cache_dir = options.extra["cache_dir"] if "cache_dir" in options.extra else default_cache_dir()
        if cache_dir:
            config["CACHE_DIR"] = str(cache_dir)
        if options.extra.get("num_threads"):
            config["INFERENCE_NUM_THREADS"] = str(int(options.extra["num_threads"]))
        xml = artifact_file(directory, metadata.get("xml", XML), what="xml")
        if not xml.is_file() or not xml.with_suffix(".bin").is_file():
            raise ArtifactError(f"{directory} lacks the OpenVINO IR ({XML} + {BIN})")
        # compiled from the loaded path itself: the model cache is keyed on it, so a reload skips compiling
        compiled = _compile(str(xml), ov_device, config)
        # a private copy of the IR, so this engine can be saved again whatever happens to `directory`
        files = Path(tempfile.mkdtemp(prefix="motorpool-openvino-"))
        shutil.copy2(xml, files / XML)
        shutil.copy2(xml.with_suffix(".bin"), files / BIN)
        info = {"runtime": "OpenVINO " + ov.__version__.split("-")[0], **_kept_info(metadata), "ov_device": ov_device}
        info.update(_compiled_info(compiled, config))
        return OpenVINORunner(compiled, device=options.device, precision=options.precision, info=info,
                              config=config, files=files)




def _kept_info(info: dict[str, Any]) -> dict[str, Any]:
    """What a loaded engine still reports about how it was built (kept in the manifest)."""
    return {k: v for k, v in info.items()
            if k in ("converter", "convert_attempts", "ov_device") or k.startswith("int8_")}


def default_cache_dir() -> str | None:
    """OpenVINO's model cache: ``<motorpool cache root>/openvino``, private to the user (0o700); None (no model
    cache, with a warning) when that directory cannot be created or is not private."""
    path = usable_cache_dir("openvino", what="OpenVINO model cache", stacklevel=4)
    return None if path is None else str(path)


#: the compile properties an artifact may carry (what compile_config writes); nothing that names a path
STORED_PROPERTIES = frozenset({"INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS",
                               "INFERENCE_NUM_THREADS", "DEVICE_PROPERTIES"})


def _stored_config(stored: Any, directory: Path) -> dict[str, Any]:
    """The properties a saved artifact may hand to ``compile_model``: :data:`STORED_PROPERTIES`, as strings (and a
    virtual device's per-device precision hints); anything else (``CACHE_DIR``, ...) is dropped with a warning."""
    if not isinstance(stored, dict):
        return {}
    config: dict[str, Any] = {}
    dropped = []
    for key, value in stored.items():
        if key == "DEVICE_PROPERTIES" and isinstance(value, dict) and all(
                isinstance(v, dict) and set(v) <= {"INFERENCE_PRECISION_HINT"} for v in value.values()):
            config[key] = {str(d): {k: str(x) for k, x in v.items()} for d, v in value.items()}
        elif key in STORED_PROPERTIES and key != "DEVICE_PROPERTIES" and isinstance(value, (str, int)):
            config[key] = str(value)
        else:
            dropped.append(str(key))
    if dropped:
        warnings.warn(f"{directory}: ignoring the stored OpenVINO propert{'y' if len(dropped) == 1 else 'ies'} "
                      f"{', '.join(sorted(dropped))}: a saved engine cannot choose where OpenVINO writes or what it "
                      "loads; pass cache_dir to motorpool.load(..., options=...) yourself", TrustWarning, stacklevel=4)
    return config


def compile_config(precision: str, extra: dict[str, Any], ov_device: str) -> dict[str, Any]:
    """The properties ``compile_model`` gets, as JSON-able strings (they go into the manifest)."""
    hint = PRECISION_HINTS[precision]
    if precision == "int8" and extra.get("inference_precision"):
        hint = str(extra["inference_precision"])
    perf = str(extra.get("performance_hint", "LATENCY")).upper()
    if perf not in PERFORMANCE_HINTS:
        raise UnsupportedError(f"performance_hint {perf!r}: choose one of {', '.join(PERFORMANCE_HINTS)}",
                               backend=NAME)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": perf}
    if ov_device.startswith(("AUTO", "MULTI", "HETERO")):
        # a virtual device passes the precision hint on per device, to whichever it picks
        config = {"PERFORMANCE_HINT": perf, "DEVICE_PROPERTIES": {
            d: {"INFERENCE_PRECISION_HINT": hint} for d in ov_core().available_devices}}
    if "num_streams" in extra:
        config["NUM_STREAMS"] = str(extra["num_streams"])
    if "num_threads" in extra:
        config["INFERENCE_NUM_THREADS"] = str(int(extra["num_threads"]))
    return config


def _compile(model, ov_device: str, config: dict[str, Any]):
    props = dict(config)
    try:
        return ov_core().compile_model(model, ov_device, props)
    except Exception as exc:
        raise CompileError(f"OpenVINO could not compile the model for {ov_device} with {props}: "
                           f"{first_line(exc, 800)}", backend=NAME) from exc


def _compiled_info(compiled, config: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"config": dict(config)}
    if config.get("INFERENCE_NUM_THREADS"):
        info["threads"] = int(config["INFERENCE_NUM_THREADS"])
    for prop in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "OPTIMAL_NUMBER_OF_INFER_REQUESTS",
                 "EXECUTION_DEVICES"):
        try:
            value = compiled.get_property(prop)
        except Exception:  # noqa: BLE001 - not every device reports every property
            continue
        info[prop.lower()] = value if isinstance(value, (int, float)) else (
            [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value))
    return info


def convert(model: torch.nn.Module, examples: tuple, spec, converters: tuple[str, ...]):
    """``openvino.convert_model``, trying ``converters`` in order. Returns (ov.Model, converter, attempts)."""
    import openvino as ov

    unknown = [c for c in converters if c not in CONVERTERS]
    if unknown or not converters:
        raise ValueError(f"converters {list(converters)!r}: choose from {', '.join(CONVERTERS)}")
    attempts: list[dict[str, Any]] = []
    for converter in converters:
        try:
            with quiet_exporters():
                if converter == "export":
                    ov_model = ov.convert_model(export_program(model, spec, examples, flat=True))
                else:
                    with torch.no_grad():
                        ov_model = ov.convert_model(FlatOutputs(model), example_input=tuple(examples))
            _set_interface(ov_model, spec)
        except Exception as exc:  # noqa: BLE001 - each converter's failure is a reason in the report
            attempts.append({"converter": converter, "ok": False, "error": first_line(exc)})
            continue
        attempts.append({"converter": converter, "ok": True, "error": None})
        return ov_model, converter, attempts
    raise CompileError("openvino.convert_model failed with every converter: " +
                       "; ".join(f"{a['converter']}: {a['error']}" for a in attempts), backend=NAME)


def _set_interface(ov_model, spec) -> None:
    """Inputs named and shaped after the spec (its named dimensions dynamic), outputs ``output0..N``."""
    import openvino as ov

    if len(ov_model.inputs) != len(spec.inputs):
        raise CompileError(f"the converted model takes {len(ov_model.inputs)} inputs, expected "
                           f"{len(spec.inputs)} {spec.describe()} (an input the model does not use is dropped)",
                           backend=NAME)
    shapes = {}
    for port, t in zip(ov_model.inputs, spec.inputs):
        port.get_tensor().set_names({t.name})
        shapes[port] = ov.PartialShape([ov.Dimension(-1) if isinstance(d, str) else ov.Dimension(d)
                                        for d in t.shape])
        want = ov.Type.bf16 if t.dtype == "bfloat16" else ov.Type(np.dtype(t.dtype))
        if port.get_element_type() != want:
            raise CompileError(f"the converted model's input {t.name!r} is {port.get_element_type()}, "
                               f"expected {t.dtype}", backend=NAME)
    ov_model.reshape(shapes)
    for i, port in enumerate(ov_model.outputs):
        port.get_tensor().set_names({f"output{i}"})


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(OpenVINOBackend)]
