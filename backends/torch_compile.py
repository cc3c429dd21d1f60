"""``torch_compile``: ``torch.compile`` with Inductor, dynamic on the spec's named dimensions.

Compiled once at ``compile`` time, warmed up at batch sizes 1 and >= 2, so that later batch sizes run
the same graph instead of recompiling. Saved through ``torch.export`` (``.pt2``) and recompiled on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from motorpool.plugin import (INT8_OPTION, Availability, Backend, BackendRecord, Capabilities, CompileError,
                              CompileOptions, Option, Runner, TorchRunner, artifact_file, cache_root, export_program,
                              fp32_strict, hookimpl, place, prepare_torch_precision, private_dir_problem, save_exported,
                              torch_availability, torch_export_file_reasons)

ARTIFACT = "model.pt2"
#: Inductor's compiled kernels (torch.compiler.save_cache_artifacts), loaded before recompiling: cuts cold start
INDUCTOR_CACHE = "inductor_cache.bin"


def _compile_and_warm(module: torch.nn.Module, spec, *, device: str, mode: str | None) -> Any:
    compiled = torch.compile(module, backend="inductor", mode=mode)
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
        priority={"*": 50, "nvidia": 20}, int8_modes=("static",),
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
        except Exception:  # noqa: BLE001 - torch.compile may still handle what torch.export cannot
            exported = None
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
        return torch_export_file_reasons(directory, metadata, ARTIFACT)

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        program = torch.export.load(artifact_file(directory, metadata.get("file", ARTIFACT)))
        module = program.module().to(options.device)
        if metadata.get("inductor_cache") and _trusted(directory):
            cached = artifact_file(directory, metadata["inductor_cache"], what="inductor_cache")
            torch.compiler.load_cache_artifacts(cached.read_bytes())
        compiled = _compile_and_warm(module, options.spec, device=options.device, mode=metadata.get("mode"))
        return TorchCompileRunner(compiled, module, spec=options.spec, device=options.device,
                                  precision=options.precision, exported=program,
                                  info={"runtime": "Inductor", "mode": metadata.get("mode")})


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(TorchCompileBackend)]
