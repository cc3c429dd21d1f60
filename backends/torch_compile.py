"""``torch_compile``: Inductor, dynamic on the spec's named dimensions.

A model ``torch.export`` can capture is compiled ahead of time with AOTInductor
(``torch._inductor.aoti_compile_and_package``): one native package (kernels, C++ wrapper, weights) that the
engine runs and that ``save`` writes as it is, so a load (``aoti_load_package``) takes milliseconds instead
of recompiling. The package is native code built for this CPU's instruction set: the manifest marks it
``"code": true`` and records the ISA it was built for (``isa``); a load on a machine whose ISA differs
recompiles from the ``torch.export`` program saved beside it, with a warning.

``mode`` (``options={"mode": "reduce-overhead"}``: CUDA graphs, ``"max-autotune"``...) and models
torch.export cannot capture go through ``torch.compile`` instead: compiled once, warmed up at batch sizes
1 and >= 2 so later batch sizes run the same graph, saved as a ``.pt2`` and recompiled on load (Inductor's
kernel cache saved beside it cuts that when loaded from motorpool's own cache).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from motorpool.plugin import (INT8_OPTION, Availability, Backend, BackendRecord, Capabilities, CompileError,
                              CompileOptions, Option, Runner, TorchRunner, artifact_file, cache_root, detect_hardware,
                              export_program, fp32_strict, hookimpl, own_frame, place, prepare_torch_precision,
                              private_dir_problem, save_exported, torch_availability, torch_export_file_reasons)

ARTIFACT = "model.pt2"
#: the AOTInductor package: native code (a shared library) plus the weights, for one ISA
AOTI_PACKAGE = "model.aoti.pt2"
#: Inductor's compiled kernels (torch.compiler.save_cache_artifacts), loaded before recompiling: cuts cold start
INDUCTOR_CACHE = "inductor_cache.bin"


def _compile_and_warm(module: torch.nn.Module, spec, *, device: str, mode: str | None) -> Any:
    compiled = torch.compile(own_frame(module), backend="inductor", mode=mode)  # a dynamo cache of its own
    sizes = {name: max(2, spec.example_sizes.get(name, 2)) for name in spec.dynamic_dims}
    warm = spec.random_inputs(sizes=sizes, device=device)
    for t, x in zip(spec.inputs, warm):
        for axis, d in enumerate(t.shape):
            if isinstance(d, str):
                torch._dynamo.mark_dynamic(x, axis)
    # Inductor picks its matmul kernels while compiling: keep TF32 off then too (a no-op off CUDA)
    with torch.inference_mode(), fp32_strict(device):
        compiled(*warm)
        if spec.has_dynamic_batch:  # size 1 is specialised by dynamo; build that graph now, not on a call
            compiled(*spec.random_inputs(sizes={**sizes, "batch": 1}, device=device))
    return compiled


def isa_key(device: str) -> dict[str, Any]:
    """What an AOTInductor package built here depends on: the CPU's architecture and ISA features (on CUDA,
    also the GPU's compute capability). Cheap: read from the OS, no compiler probe."""
    cpu = detect_hardware().cpu
    key: dict[str, Any] = {"arch": cpu.arch, "features": sorted(cpu.features)}
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        key["cuda_capability"] = f"{major}.{minor}"
    return key


def _vec_isa() -> str | None:
    """The vector ISA Inductor generated this build's CPU kernels for (recorded; loads compare features)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        return str(pick_vec_isa()) or "none"
    except Exception:  # noqa: BLE001 - an Inductor without the probe: the features alone key it
        return None


def isa_mismatch(built: dict[str, Any], here: dict[str, Any]) -> str | None:
    """Why a package built for ``built`` should be rebuilt ``here`` (None when it is built for this ISA).

    A CPU lacking a feature the package was built with cannot run it; one with features the package does
    not use runs it, slower than a rebuild would: both rebuild.
    """
    for field in ("arch", "cuda_capability"):
        if built.get(field) != here.get(field):
            return f"{field} {built.get(field)!r} there, {here.get(field)!r} here"
    have, had = set(here.get("features", ())), set(built.get("features", ()))
    if had - have:
        return f"this CPU lacks {', '.join(sorted(had - have))}"
    if have - had:
        return f"this CPU also has {', '.join(sorted(have - had))}, which the package does not use"
    return None


class _PackageCall:
    """Calls an AOTInductor package's runner with flat inputs and returns its flat outputs (pytree order).

    Uses the package loader itself: ``torch._inductor.aoti_load_package`` would import all of Inductor
    (seconds) only to wrap the same loader in pytree (un)flattening that the Engine already does.
    """

    def __init__(self, package: Path, device: str):
        index = torch.device(device).index if device.startswith("cuda") else -1
        self._loader = torch._C._aoti.AOTIModelPackageLoader(str(package), "model", False, 1,
                                                             -1 if index is None else index)

    def __call__(self, *inputs):
        # the package's kernels were generated for the contiguous strides it was exported with: other layouts
        # (channels_last, transposed, sliced) would be read with the wrong strides
        return self._loader.run([x.contiguous() for x in inputs])


class AotiRunner(TorchRunner, Runner):
    """An AOTInductor package, loaded: the same native code whether it was just compiled or loaded."""

    def __init__(self, package: Path, program, *, spec, device: str, precision: str, info: dict[str, Any],
                 owned_dir: tempfile.TemporaryDirectory | None = None):
        # calls still go through the engine's lock: one package runner holds one set of buffers
        self._init_torch(_PackageCall(package, device), device=device, precision=precision, thread_safe=False,
                         info=info)
        self._package = package
        self._program = program  # the torch.export program, or the path of its saved .pt2 (read only if needed)
        self._spec = spec
        self._owned_dir = owned_dir  # the temporary directory holding a freshly built package

    def save(self, directory: Path) -> dict[str, Any]:
        shutil.copyfile(self._package, directory / AOTI_PACKAGE)
        if isinstance(self._program, Path):
            shutil.copyfile(self._program, directory / ARTIFACT)
        else:
            torch.export.save(self._program, directory / ARTIFACT)
        return {"file": ARTIFACT, "format": "aoti", "aoti_package": AOTI_PACKAGE, "code": True,
                "isa": self.info["isa"], "mode": None}


def _compile_aoti(program, *, spec, device: str, precision: str, info: dict[str, Any]) -> AotiRunner:
    """AOTInductor-compile ``program`` into a temporary package and load it."""
    owned = tempfile.TemporaryDirectory(prefix="motorpool-aoti-")
    # Inductor picks its matmul kernels while compiling: keep TF32 off then too (a no-op off CUDA)
    with fp32_strict(device):
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(Path(owned.name) / AOTI_PACKAGE))
    return AotiRunner(Path(package), program, spec=spec, device=device, precision=precision,
                      info={**info, "runtime": "AOTInductor", "isa": {**isa_key(device), "vec_isa": _vec_isa()}},
                      owned_dir=owned)


class TorchCompileRunner(TorchRunner, Runner):
    def __init__(self, compiled, source: torch.nn.Module, *, spec, device: str, precision: str, info=None,
                 exported=None):
        # dynamo's compile and guard caches are process-global; calls go through the engine's lock
        self._init_torch(compiled, device=device, precision=precision, thread_safe=False, info=info)
        self._source = source
        self._spec = spec
        self._exported = exported

    def save(self, directory: Path) -> dict[str, Any]:
        save_exported(self._exported, self._source, self._spec, device=self.device, path=directory / ARTIFACT,
                      backend="torch_compile")
        meta = {"file": ARTIFACT, "format": "torch.export", "mode": self.info.get("mode")}
        # The kernels only match what load compiles (the exported program's module) when this runner ran
        # that same module: compile() runs it whenever torch.export can capture the model.
        if self._exported is not None:
            saved = torch.compiler.save_cache_artifacts()
            if saved:
                (directory / INDUCTOR_CACHE).write_bytes(saved[0])
                meta["inductor_cache"] = INDUCTOR_CACHE
        return meta


def _trusted(directory: Path) -> bool:
    """Whether Inductor's saved kernels may be loaded from ``directory``.

    ``torch.compiler.load_cache_artifacts`` unpickles, and motorpool.load reads no pickle from a directory it
    was handed. Inside motorpool's own artifact cache (a directory private to this user, written only by
    motorpool) the bytes are ours, so there they are loaded; elsewhere the program is recompiled from the
    ``.pt2`` alone.
    """
    root = cache_root("engines")
    try:
        directory.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return private_dir_problem(root) is None and private_dir_problem(root.parent) is None


class TorchCompileBackend(Backend):
    name = "torch_compile"
    description = "torch.compile (Inductor)"
    capabilities = Capabilities(
        devices=("cpu", "cuda"), precisions=frozenset({"fp32", "fp16", "bf16", "int8"}), dynamic_batch=True,
        dynamic_shapes=True, thread_safe=False, serializable=True, compile_cost="high",
        # measured (bench_real, issue 17; AOTInductor): on a Sapphire Rapids it led causal attention
        # (GPT-2, Llama) over onnxruntime by 1.06-1.51x; a close call with onnxruntime, settled by timing
        priority={"*": 50, "nvidia": 20, "cpu/attention/causal": 15}, int8_modes=("static",),
    )
    options = (
        INT8_OPTION,
        Option("mode", str, None, "torch.compile's mode: default, reduce-overhead, max-autotune, "
               "max-autotune-no-cudagraphs"),
    )

    def availability(self) -> Availability:
        av = torch_availability()
        return Availability.ok(version=av.version, devices=[d for d in av.devices if d != "mps"],
                               versions=av.versions)

    def compile(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions) -> Runner:
        mode = options.extra.get("mode")
        # int8 goes through PT2E (torchao), whose q/dq graph Inductor lowers to fused int8 kernels
        prepared = prepare_torch_precision(place(model, options.device), example_inputs, options,
                                           backend=self.name, pt2e=True)
        source = prepared.module
        try:  # compile what load will compile (the exported module), so saved Inductor kernels match it
            exported = export_program(source, options.spec, device=options.device)
            source = exported.module()
        except Exception as exc:  # noqa: BLE001 - torch.compile may still handle what torch.export cannot
            exported = None
            prepared.info["aoti_skipped"] = f"torch.export cannot capture the model: {type(exc).__name__}"
        aoti_error = None
        if exported is not None and mode is None:
            try:
                return _compile_aoti(exported, spec=options.spec, device=options.device,
                                     precision=options.precision, info={"mode": None, **prepared.info})
            except Exception as exc:  # noqa: BLE001 - torch.compile is the fallback; its report says why
                aoti_error = f"AOTInductor failed, torch.compile used instead: {type(exc).__name__}: {str(exc)[:300]}"
        elif mode is not None:
            prepared.info["aoti_skipped"] = f"mode={mode!r} runs through torch.compile"
        if aoti_error:
            prepared.info["aoti_skipped"] = aoti_error
        try:
            compiled = _compile_and_warm(source, options.spec, device=options.device, mode=mode)
        except Exception as exc:
            raise CompileError(f"torch.compile failed: {type(exc).__name__}: {str(exc)[:2000]}",
                               backend=self.name) from exc
        return TorchCompileRunner(compiled, source, spec=options.spec, device=options.device,
                                  precision=options.precision, exported=exported,
                                  info={"runtime": "Inductor", "mode": mode, **prepared.info})

    def code_in_artifact(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        # the .pt2 is recompiled here by Inductor; Inductor's pickled kernels are read only from the private cache
        reasons = torch_export_file_reasons(directory, metadata, ARTIFACT)
        if metadata.get("format") == "aoti":
            reasons.append(f"{metadata.get('aoti_package')} is an AOTInductor package: native code (a shared "
                           "library) that runs when it loads")
        return reasons

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        if metadata.get("format") == "aoti":
            return self._load_aoti(directory, metadata, options)
        program = torch.export.load(artifact_file(directory, metadata.get("file", ARTIFACT)))
        module = program.module().to(options.device)
        if metadata.get("inductor_cache") and _trusted(directory):
            cached = artifact_file(directory, metadata["inductor_cache"], what="inductor_cache")
            torch.compiler.load_cache_artifacts(cached.read_bytes())
        compiled = _compile_and_warm(module, options.spec, device=options.device, mode=metadata.get("mode"))
        return TorchCompileRunner(compiled, module, spec=options.spec, device=options.device,
                                  precision=options.precision, exported=program,
                                  info={"runtime": "Inductor", "mode": metadata.get("mode")})


    def _load_aoti(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        built, here = metadata.get("isa") or {}, isa_key(options.device)
        program_file = artifact_file(directory, metadata.get("file", ARTIFACT))
        info = {"runtime": "AOTInductor", "mode": None}
        why = isa_mismatch(built, here)
        if why is None:
            package = artifact_file(directory, metadata["aoti_package"], what="aoti_package")
            return AotiRunner(package, program_file, spec=options.spec,
                              device=options.device, precision=options.precision,
                              info={**info, "isa": built, "loaded": "package"})
        program = torch.export.load(program_file)
        warnings.warn(f"torch_compile: the saved AOTInductor package was built for another instruction set "
                      f"({why}); recompiling it for this machine from the saved program", stacklevel=2)
        runner = _compile_aoti(program, spec=options.spec, device=options.device, precision=options.precision,
                               info={**info, "recompiled": why})
        return runner


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(TorchCompileBackend)]
