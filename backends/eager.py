"""``eager``: the model itself in eval + inference mode. The reference every other backend is checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from motorpool.plugin import (INT8_OPTION, Availability, Backend, BackendRecord, Capabilities, CompileOptions, Runner,
                              TorchRunner, artifact_file, hookimpl, place, prepare_torch_precision, save_exported,
                              torch_availability, torch_export_file_reasons)

ARTIFACT = "model.pt2"


class EagerRunner(TorchRunner, Runner):
    def __init__(self, module, *, spec, device: str, precision: str, exported=None, info=None):
        self._init_torch(module, device=device, precision=precision,
                         info={"runtime": "eager PyTorch", **(info or {})})
        self._spec = spec
        self._exported = exported

    def save(self, directory: Path) -> dict[str, Any]:
        save_exported(self._exported, self.module, self._spec, device=self.device, path=directory / ARTIFACT,
                      backend="eager")
        return {"file": ARTIFACT, "format": "torch.export"}


class EagerBackend(Backend):
    name = "eager"
    description = "the model itself, in eval and inference mode (the reference)"
    capabilities = Capabilities(
        devices=("cpu", "cuda", "mps"), precisions=frozenset({"fp32", "fp16", "bf16", "int8"}), dynamic_batch=True,
        dynamic_shapes=True,
        thread_safe=True, serializable=True, compile_cost="none", priority={"apple": 20, "*": 90},
        int8_modes=("dynamic", "static"), reference=True,
    )
    options = (INT8_OPTION,)

    def availability(self) -> Availability:
        return torch_availability()

    def compile(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions) -> Runner:
        # fp16/bf16 cast the weights; int8 is torch.ao dynamic, or FX static with calibration= (core/quantize.py)
        prepared = prepare_torch_precision(place(model, options.device), example_inputs, options,
                                           backend=self.name)
        return EagerRunner(prepared.module, spec=options.spec, device=options.device, precision=options.precision,
                           info=prepared.info)

    def code_in_artifact(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        # a .pt2 is data (a JSON graph of ATen ops and raw tensors) unless it carries pickled payloads
        return torch_export_file_reasons(directory, metadata, ARTIFACT)

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        program = torch.export.load(artifact_file(directory, metadata.get("file", ARTIFACT)))
        module = program.module().to(options.device)
        return EagerRunner(module, spec=options.spec, device=options.device, precision=options.precision,
                           exported=program)


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(EagerBackend)]
