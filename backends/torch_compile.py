"""``torch_compile``: ``torch.compile`` with Inductor, dynamic on the spec's named dimensions.

Compiled once at ``compile`` time, warmed up at batch sizes 1 and >= 2, so that later batch sizes run
the same graph instead of recompiling. Saved through ``torch.export`` (``.pt2``) and recompiled on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from motorpool import (Availability, Backend, BackendRecord, Capabilities, CompileError, CompileOptions, Runner,
                       UnsupportedError, hookimpl)
from motorpool.torchutil import TorchRunner, export_program, place, torch_availability

ARTIFACT = "model.pt2"


def _compile_and_warm(module: torch.nn.Module, spec, *, device: str, mode: str | None) -> Any:
    compiled = torch.compile(module, backend="inductor", mode=mode)
    sizes = {name: max(2, spec.example_sizes.get(name, 2)) for name in spec.dynamic_dims}
    warm = spec.random_inputs(sizes=sizes, device=device)
    for t, x in zip(spec.inputs, warm):
        for axis, d in enumerate(t.shape):
            if isinstance(d, str):
                torch._dynamo.mark_dynamic(x, axis)
    with torch.inference_mode():
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
        program = self._exported
        if program is None:
            try:
                program = export_program(self._source, self._spec, device=self.device)
            except Exception as exc:  # noqa: BLE001
                raise UnsupportedError(
                    f"cannot save a torch_compile engine: torch.export cannot capture this model "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                    backend="torch_compile") from exc
        torch.export.save(program, directory / ARTIFACT)
        return {"file": ARTIFACT, "format": "torch.export", "mode": self.info.get("mode")}


class TorchCompileBackend(Backend):
    name = "torch_compile"
    description = "torch.compile (Inductor)"
    capabilities = Capabilities(
        devices=("cpu", "cuda"), precisions=frozenset({"fp32"}), dynamic_batch=True, dynamic_shapes=True,
        thread_safe=False, serializable=True, compile_cost="high", priority={"*": 50, "nvidia": 20},
    )

    def availability(self) -> Availability:
        av = torch_availability()
        return Availability.ok(version=av.version, devices=[d for d in av.devices if d != "mps"],
                               versions=av.versions)

    def compile(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions) -> Runner:
        mode = options.extra.get("mode")
        source = place(model, options.device)
        try:
            compiled = _compile_and_warm(source, options.spec, device=options.device, mode=mode)
        except Exception as exc:
            raise CompileError(f"torch.compile failed: {type(exc).__name__}: {str(exc)[:2000]}",
                               backend=self.name) from exc
        return TorchCompileRunner(compiled, source, spec=options.spec, device=options.device,
                                  precision=options.precision, info={"runtime": "Inductor", "mode": mode})

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        program = torch.export.load(directory / metadata.get("file", ARTIFACT))
        module = program.module().to(options.device)
        compiled = _compile_and_warm(module, options.spec, device=options.device, mode=metadata.get("mode"))
        return TorchCompileRunner(compiled, module, spec=options.spec, device=options.device,
                                  precision=options.precision, exported=program,
                                  info={"runtime": "Inductor", "mode": metadata.get("mode")})


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(TorchCompileBackend)]
