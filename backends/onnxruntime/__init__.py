"""``onnxruntime``: export to ONNX (dynamo exporter, TorchScript exporter as fallback), run with ONNX Runtime.

The execution provider follows the device asked for (cpu -> CPUExecutionProvider, cuda -> CUDA, mps/ane ->
CoreML) among those the installed onnxruntime offers; a session that ends up on another provider than
the one asked for is an error, never a silent CPU fallback. Graph optimization is ORT_ENABLE_ALL unless
``options={"graph_optimization_level": ...}`` says otherwise. Saved as ``model.onnx`` (+ external data
over 2 GB) with the session options in the manifest.

Backend options (``motorpool.compile(..., options={...})``):
``graph_optimization_level`` ("disable", "basic", "extended", "all"), ``intra_op_num_threads``,
``inter_op_num_threads``, ``execution_mode`` ("sequential", "parallel"), ``providers`` (explicit list of
execution provider names, e.g. ``["TensorrtExecutionProvider", "CUDAExecutionProvider"]``),
``exporters`` (order to try, default ``["dynamo", "torchscript"]``), ``opset``, ``transformer_optimizer``
(a model type for ``onnxruntime.transformers.optimizer``, e.g. "bert": fuses attention and LayerNorm),
``int8_mode`` ("static"/"dynamic"), ``int8_op_types``, ``int8_per_channel``, ``log_severity_level``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch

from motorpool.plugin import (Availability, Backend, BackendRecord, BackendUnavailable, Capabilities, CompileError,
                              CompileOptions, Option, Runner, TrustWarning, UnsupportedError, artifact_file,
                              distribution_version, first_line, hookimpl, place, probe_package)

from .export import EXPORTERS, EXTERNAL_DATA_THRESHOLD, MODEL_FILE, export_onnx, output_names_for, save_model_proto
from .precision import convert
from .profiling import summarize_ort_profile

NAME = "onnxruntime"
EXTRA = "onnxruntime"
CPU_EP = "CPUExecutionProvider"
#: execution providers that serve each kind of device, preferred first
DEVICE_PROVIDERS = {
    "cpu": (CPU_EP,),
    "cuda": ("CUDAExecutionProvider", "TensorrtExecutionProvider"),
    "mps": ("CoreMLExecutionProvider",),
    "ane": ("CoreMLExecutionProvider",),
}
#: Core ML compute units per motorpool device
_COREML_UNITS = {"mps": "CPUAndGPU", "ane": "CPUAndNeuralEngine"}
_FIX_FOR_KIND = {
    "cuda": 'pip install onnxruntime-gpu (in place of onnxruntime) on a machine with an NVIDIA GPU',
    "mps": "use the onnxruntime wheel for macOS on Apple silicon (it ships the CoreML provider)",
    "ane": "use the onnxruntime wheel for macOS on Apple silicon (it ships the CoreML provider)",
}
OPT_LEVELS = ("disable", "basic", "extended", "all")
#: session settings kept in the manifest, with their defaults
SESSION_DEFAULTS = {"graph_optimization_level": "all", "intra_op_num_threads": 0, "inter_op_num_threads": 0,
                    "execution_mode": "sequential", "log_severity_level": 3}


class OnnxRuntimeRunner(Runner):
    """An ``InferenceSession`` over NumPy arrays. ``InferenceSession.run`` is thread-safe, so is this."""

    native_inputs = "numpy"
    thread_safe = True

    def __init__(self, session, workdir: Path, *, input_names: list[str], output_names: list[str], device: str,
                 precision: str, session_config: dict[str, Any], info: dict[str, Any], owns_workdir: bool):
        self.session = session
        self.device = device
        self.precision = precision
        self.info = info
        self._workdir = workdir
        self._config = session_config
        # fed and read by name in the spec's and pytree's order, never in the session's: a graph rewrite
        # (the transformer optimizer's embedding fusion) may reorder the graph's inputs
        _check_names("inputs", [i.name for i in session.get_inputs()], input_names)
        _check_names("outputs", [o.name for o in session.get_outputs()], output_names)
        self._in_names = list(input_names)
        self._out_names = list(output_names)
        # The C session's run, not InferenceSession.run: the wrapper re-validates the input names on every
        # call (they are fixed here) and, on an execution-provider failure, silently retries on the CPU,
        # which motorpool forbids. Its fallback is switched off too, for anyone calling session.run.
        session.disable_fallback()
        c_session = getattr(session, "_sess", None)
        self._run = c_session.run if c_session is not None else (lambda o, f, _opts: session.run(o, f))
        if owns_workdir:
            weakref.finalize(self, shutil.rmtree, str(workdir), True)

    def run(self, inputs: list[Any]) -> list[Any]:
        return self._run(self._out_names, dict(zip(self._in_names, inputs)), None)

    profiler_name = "onnxruntime session profiling"

    def profile_operators(self, inputs: list[Any], *, top: int = 10, calls: int = 5) -> list[Any]:
        """ONNX Runtime's own profiler, on a twin session of the same model and settings (see
        ``Runner.profile_operators``); this engine's session is left untouched."""
        with tempfile.TemporaryDirectory(prefix="motorpool-ort-profile-") as tmp:
            providers = self._config.get("providers") or self.session.get_providers()
            session = make_session(self._workdir / MODEL_FILE, self._config, providers, self.device,
                                   profile_prefix=str(Path(tmp) / "ort"))
            feed = dict(zip(self._in_names, inputs))
            for _ in range(calls):
                session.run(self._out_names, feed)
            return summarize_ort_profile(session.end_profiling(), top=top)

    def save(self, directory: Path) -> dict[str, Any]:
        for f in self._workdir.iterdir():  # model.onnx and, over 2 GB, its external data
            shutil.copy2(f, directory / f.name)
        return {"file": MODEL_FILE, "session": dict(self._config), "inputs": self._in_names,
                "outputs": self._out_names, **_kept_info(self.info)}


class OnnxRuntimeBackend(Backend):
    name = NAME
    extra = EXTRA
    description = "torch.onnx.export + ONNX Runtime (CPU, CUDA, CoreML execution providers)"
    capabilities = Capabilities(
        devices=("cpu", "cuda", "mps", "ane"), precisions=frozenset({"fp32", "fp16", "int8"}),
        dynamic_batch=True, dynamic_shapes=True, thread_safe=True, serializable=True, compile_cost="low",
        # measured (bench_real, issue 17): on CPUs it leads convolutional models and attention with a dynamic
        # sequence or a causal mask by 1.07-1.43x, and trails openvino on static attention by 1.09-2.2x
        priority={"cpu": 20, "cpu/convolution": 10, "cpu/attention": 25, "cpu/attention/dynamic": 15,
                  "cpu/attention/causal": 15, "nvidia": 30, "*": 40}, native_inputs="numpy",
        int8_modes=("dynamic", "static"),
    )
    options = (
        Option("graph_optimization_level", str, "all", "ONNX Runtime's graph optimizations", choices=OPT_LEVELS),
        Option("num_threads", int, None, "the session's threads (intra-op; inter-op 1); also when loading", load=True),
        Option("intra_op_num_threads", int, 0, "threads inside an operator (0: ONNX Runtime's default)"),
        Option("inter_op_num_threads", int, 0, "threads across operators (parallel execution mode)"),
        Option("execution_mode", str, "sequential", "run operators one after another or in parallel",
               choices=("sequential", "parallel")),
        Option("log_severity_level", int, 3, "ONNX Runtime's log level (0 verbose .. 4 fatal)"),
        Option("providers", (list, tuple), None, "execution providers in order, names or (name, options) pairs"),
        Option("exporters", (list, tuple), EXPORTERS, "ONNX exporters to try in order"),
        Option("opset", int, None, "ONNX opset to export (default: the exporter's)"),
        Option("transformer_optimizer", str, None, "run onnxruntime.transformers' optimizer for this model type "
               "(bert, gpt2, ...)"),
        Option("num_heads", int, 0, "attention heads, for the transformer optimizer"),
        Option("hidden_size", int, 0, "hidden size, for the transformer optimizer"),
        Option("int8", str, None, "how int8 is made: static (QDQ, calibrated) or dynamic (default: static when "
               "calibration is given)", choices=("auto", "static", "dynamic")),
        Option("int8_op_types", (list, tuple), None, "operator types to quantize"),
        Option("int8_per_channel", bool, True, "per-channel weight scales"),
    )

    def availability(self) -> Availability:
        ort, problem = probe_package("onnxruntime", "onnxruntime", EXTRA)
        if problem is not None:
            return problem
        _, problem = probe_package("onnx", "onnx", EXTRA)
        if problem is not None:
            return problem
        providers = ort.get_available_providers()
        devices = _devices(providers)
        versions = {"onnxruntime": ort.__version__}
        for dist in ("onnx", "onnxscript"):
            v = distribution_version(dist)
            if v:
                versions[dist] = v
        return Availability.ok(version=ort.__version__, devices=devices, versions=versions,
                               reason="execution providers: " + ", ".join(providers))

    def compile(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions) -> Runner:
        import onnxruntime as ort

        extra = options.extra
        providers = choose_providers(options.device, ort.get_available_providers(), extra.get("providers"))
        config = session_config(extra)
        workdir = Path(tempfile.mkdtemp(prefix="motorpool-onnxruntime-"))
        try:
            model_dir, scratch = workdir / "model", workdir / "scratch"
            model_dir.mkdir()
            scratch.mkdir()
            exporters = tuple(extra.get("exporters") or EXPORTERS)
            cpu_model = _on_cpu(model, example_inputs, options)
            exported = export_onnx(cpu_model[0], cpu_model[1], options.spec.with_device("cpu"), model_dir,
                                   exporters=exporters, opset=extra.get("opset"))
            info: dict[str, Any] = {"runtime": "ONNX Runtime " + ort.__version__, "exporter": exported.exporter,
                                    "export_attempts": exported.attempts}
            if extra.get("transformer_optimizer"):
                info["transformer_optimizer"] = optimize_transformer(exported.path, str(extra["transformer_optimizer"]),
                                                                     scratch, extra)

            info.update(convert(exported.path, options.precision, options.spec, calibration=options.calibration,
                                extra=extra, workdir=scratch))
            shutil.rmtree(scratch)
            session = make_session(exported.path, config, providers, options.device)
            final = workdir / "artifact"
            model_dir.rename(final)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        info.update(_session_info(session, config))
        return OnnxRuntimeRunner(session, final, input_names=exported.input_names,
                                 output_names=exported.output_names, device=options.device,
                                 precision=options.precision, session_config=config, info=info, owns_workdir=True)

    def code_in_artifact(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        return []  # an ONNX protobuf of standard operators, parsed by ONNX Runtime: data

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        import onnxruntime as ort

        model_file = artifact_file(directory, metadata.get("file", MODEL_FILE))
        config = _with_threads(session_config(_stored_session(metadata.get("session", {}), directory)), options.extra)
        providers = choose_providers(options.device, ort.get_available_providers(), config.get("providers"))
        # the session reads the files as they are; copy them so the runner can save again after the
        # user deletes or rewrites the loaded directory (the model and its external data sit side by side;
        # folders beside them, such as an export's verification data, are not the session's)
        workdir = Path(tempfile.mkdtemp(prefix="motorpool-onnxruntime-"))
        try:
            for f in model_file.parent.iterdir():
                if f.is_file() and not f.is_symlink():
                    shutil.copy2(f, workdir / f.name)
            session = make_session(workdir / model_file.name, config, providers, options.device)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        info = {"runtime": "ONNX Runtime " + ort.__version__, **_kept_info(metadata)}
        info.update(_session_info(session, config))
        outputs = metadata.get("outputs") or output_names_for(len(session.get_outputs()))
        return OnnxRuntimeRunner(session, workdir, input_names=metadata.get("inputs") or options.spec.names,
                                 output_names=outputs, device=options.device, precision=options.precision,
                                 session_config=config, info=info, owns_workdir=True)


def _stored_session(stored: Any, directory: Path) -> dict[str, Any]:
    """The session settings an artifact may carry: the known keys, and provider *names* only. Provider options
    can make ONNX Runtime load shared libraries, so a manifest cannot pass them (SECURITY.md)."""
    if not isinstance(stored, dict):
        return {}
    session = {k: v for k, v in stored.items() if k in SESSION_DEFAULTS}
    dropped = sorted(k for k in stored if k not in SESSION_DEFAULTS and k != "providers")
    providers = stored.get("providers")
    if providers:
        entries = providers if isinstance(providers, list) else []
        names = [p if isinstance(p, str) else p[0] for p in entries
                 if isinstance(p, str) or (isinstance(p, (list, tuple)) and p and isinstance(p[0], str))]
        if len(names) != len(entries) or any(isinstance(p, (list, tuple)) and len(p) > 1 and p[1] for p in entries):
            dropped.append("provider options")
        session["providers"] = names
    if dropped:
        warnings.warn(f"{directory}: ignoring the stored onnxruntime setting(s) {', '.join(dropped)}: a saved engine "
                      "cannot pass execution provider options or other session settings; pass them yourself with "
                      "motorpool.compile(..., options=...)", TrustWarning, stacklevel=4)
    return session


def _is_big(proto) -> bool:
    return sum(len(t.raw_data) for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD


def _check_names(what: str, have: list[str], want: list[str]) -> None:
    if sorted(have) != sorted(want):
        raise CompileError(f"the ONNX model's {what} are {have}, expected {want}", backend=NAME)


def _kept_info(info: dict[str, Any]) -> dict[str, Any]:
    """What a loaded engine still reports about how it was built (kept in the manifest)."""
    return {k: v for k, v in info.items()
            if k in ("exporter", "export_attempts", "fp16", "transformer_optimizer") or k.startswith("int8_")}


def _on_cpu(model: torch.nn.Module, examples: tuple, options: CompileOptions):
    """The exporters trace on the CPU; the device only decides the execution provider."""
    if options.device == "cpu":
        return model, examples
    return place(model, "cpu"), tuple(x.cpu() for x in examples)


def _devices(providers: list[str]) -> list[str]:
    devices: list[str] = []
    if any(p in providers for p in DEVICE_PROVIDERS["cuda"]):
        devices += [f"cuda:{i}" for i in range(_nvidia_gpu_count())]
    devices.append("cpu")
    if "CoreMLExecutionProvider" in providers:
        devices += ["mps", "ane"]
    return devices


def _nvidia_gpu_count() -> int:
    """GPUs the CUDA provider could use: onnxruntime-gpu lists its CUDA provider even on machines without one."""
    try:
        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        pass
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def choose_providers(device: str, available: list[str], requested: Any = None) -> list[Any]:
    """The execution providers for ``device``: the one serving it first, the CPU provider after it for the
    nodes it does not take. ``requested`` (names, or (name, options) pairs) overrides the choice."""
    kind, _, index = device.partition(":")
    if requested:
        chosen = [r if isinstance(r, str) else (r[0], dict(r[1])) for r in requested]
        missing = [p if isinstance(p, str) else p[0] for p in chosen]
        missing = [p for p in missing if p not in available]
        if missing:
            raise UnsupportedError(f"execution provider(s) {', '.join(missing)} are not in this onnxruntime; "
                                   f"it offers {', '.join(available)}", backend=NAME)
        return chosen
    wanted = DEVICE_PROVIDERS.get(kind)
    if wanted is None:
        raise UnsupportedError(f"onnxruntime cannot target device {device!r}; it targets "
                               f"{', '.join(DEVICE_PROVIDERS)}", backend=NAME)
    present = [p for p in wanted if p in available]
    if not present:
        av = Availability.no_device(
            f"device {device!r} needs {' or '.join(wanted)}, which this onnxruntime does not have "
            f"(it has {', '.join(available)}); motorpool does not fall back to the CPU",
            fix=_FIX_FOR_KIND.get(kind))
        raise BackendUnavailable(NAME, av, f"backend {NAME!r} cannot run on {device!r}: {av.reason}"
                                 + (f" (fix: {av.fix})" if av.fix else ""))
    provider: Any = present[0]
    if kind == "cuda":
        provider = (provider, {"device_id": int(index or 0)})
    elif kind in _COREML_UNITS:
        provider = (provider, {"MLComputeUnits": _COREML_UNITS[kind]})
    return [provider] if present[0] == CPU_EP else [provider, CPU_EP]


def session_config(extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able session settings from the backend options, checked."""
    config = {k: extra.get(k, v) for k, v in SESSION_DEFAULTS.items()}
    level = config["graph_optimization_level"]
    if level not in OPT_LEVELS:
        raise UnsupportedError(f"graph_optimization_level {level!r}: choose one of {', '.join(OPT_LEVELS)}",
                               backend=NAME)
    if config["execution_mode"] not in ("sequential", "parallel"):
        raise UnsupportedError(f"execution_mode {config['execution_mode']!r}: choose sequential or parallel",
                               backend=NAME)
    for key in ("intra_op_num_threads", "inter_op_num_threads", "log_severity_level"):
        if not isinstance(config[key], int) or config[key] < 0:
            raise UnsupportedError(f"{key} must be a non-negative integer, got {config[key]!r}", backend=NAME)
    if extra.get("providers"):
        config["providers"] = [p if isinstance(p, str) else [p[0], dict(p[1])] for p in extra["providers"]]
    return _with_threads(config, extra)


def _with_threads(config: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``num_threads`` (compile or load option) as the session's intra-op pool, one inter-op thread."""
    if extra.get("num_threads"):
        return {**config, "intra_op_num_threads": int(extra["num_threads"]), "inter_op_num_threads": 1}
    return config


def make_session(path: Path, config: dict[str, Any], providers: list[Any], device: str, *,
                 profile_prefix: str | None = None):
    """An ``InferenceSession`` for ``path``; raises if it did not land on the provider asked for.
    ``profile_prefix`` turns ONNX Runtime's profiler on, writing JSON files with that prefix."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[config["graph_optimization_level"]]
    so.intra_op_num_threads = config["intra_op_num_threads"]
    so.inter_op_num_threads = config["inter_op_num_threads"]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if config["execution_mode"] == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.log_severity_level = config["log_severity_level"]
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:
        raise CompileError(f"onnxruntime could not create a session for the exported model: {first_line(exc, 800)}",
                           backend=NAME) from exc
    asked = providers[0] if isinstance(providers[0], str) else providers[0][0]
    got = session.get_providers()
    if not got or got[0] != asked:
        raise UnsupportedError(f"onnxruntime was asked to run on {device!r} with {asked}, but the session "
                               f"runs on {', '.join(got) or 'nothing'}; motorpool does not fall back silently "
                               "(check the provider's libraries: CUDA/cuDNN for CUDA, TensorRT for TensorRT)",
                               backend=NAME)
    return session


def _session_info(session, config: dict[str, Any]) -> dict[str, Any]:
    providers = session.get_providers()
    info = {"provider": providers[0], "providers": providers, "session": dict(config)}
    if config.get("intra_op_num_threads"):  # 0 is ONNX Runtime's own default: nothing to report
        info["threads"] = int(config["intra_op_num_threads"])
    return info


def optimize_transformer(path: Path, model_type: str, scratch: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Run ``onnxruntime.transformers.optimizer`` (attention / LayerNorm / GELU fusion) on the model in place.

    Returns the fused-operator counts, so the report says whether attention was really fused.
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model


    fusion = FusionOptions(model_type)
    # The default turns the attention mask into per-row lengths (mask_index), exact only for right-padded
    # masks; the raw 2-D mask keeps any mask exact
    fusion.use_raw_attention_mask(True)
    try:
        optimized = optimize_model(str(path), model_type=model_type, num_heads=int(extra.get("num_heads", 0)),
                                   hidden_size=int(extra.get("hidden_size", 0)), opt_level=0,
                                   optimization_options=fusion)
    except Exception as exc:
        raise CompileError(f"onnxruntime.transformers optimize_model(model_type={model_type!r}) failed: "
                           f"{first_line(exc)}", backend=NAME) from exc
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    out = scratch / "model.opt.onnx"
    # save_model_to_file also sorts the rewritten graph topologically
    optimized.save_model_to_file(str(out), use_external_data_format=_is_big(optimized.model))
    proto = onnx.load(str(out))
    for f in path.parent.iterdir():
        f.unlink()
    save_model_proto(proto, path)
    return {"model_type": model_type, "fused": stats}


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(OnnxRuntimeBackend)]
