"""``torchscript``: ``torch.jit.trace`` then ``torch.jit.freeze``; saved as a TorchScript archive."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree

from motorpool.plugin import (INT8_OPTION, Availability, Backend, BackendRecord, Capabilities, CompileError,
                              CompileOptions, Runner, TorchRunner, artifact_file, hookimpl, place,
                              prepare_torch_precision, torch_availability)

ARTIFACT = "model.ts"


class _FlatOutputs(torch.nn.Module):
    """Returns the model's outputs flattened in pytree order: the tracer cannot type nested dicts/tuples,
    and the Engine re-nests the flat list with the model's own output structure anyway."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return tuple(torch.utils._pytree.tree_flatten(self.model(*inputs))[0])


class TorchScriptRunner(TorchRunner, Runner):
    def __init__(self, module, *, device: str, precision: str, info=None):
        self._init_torch(module, device=device, precision=precision, info=info)

    def save(self, directory: Path) -> dict[str, Any]:
        torch.jit.save(self.module, str(directory / ARTIFACT))
        return {"file": ARTIFACT, "frozen": self.info.get("frozen", False)}


class TorchScriptBackend(Backend):
    name = "torchscript"
    description = "torch.jit.trace + freeze"
    capabilities = Capabilities(
        devices=("cpu", "cuda"), precisions=frozenset({"fp32", "fp16", "bf16", "int8"}), dynamic_batch=True,
        dynamic_shapes=True, thread_safe=True, serializable=True, compile_cost="low",
        priority={"*": 60, "nvidia": 60}, int8_modes=("dynamic", "static"),
    )
    options = (INT8_OPTION,)

    def availability(self) -> Availability:
        if not hasattr(torch, "jit") or not hasattr(torch.jit, "trace"):
            return Availability.import_failed("torch", RuntimeError("this torch build has no torch.jit"))
        av = torch_availability()
        return Availability.ok(version=av.version, devices=[d for d in av.devices if d != "mps"],
                               versions=av.versions)

    def compile(self, model: torch.nn.Module, example_inputs: tuple, options: CompileOptions) -> Runner:
        # the precision's transform (cast weights, torch.ao int8) is traced in with the model
        prepared = prepare_torch_precision(place(model, options.device), example_inputs, options,
                                           backend=self.name)
        model = prepared.module
        info: dict[str, Any] = {"runtime": "TorchScript", **prepared.info}
        # Tracing records one path through the model; a tracer that cannot check its own trace (dict
        # outputs, data-dependent shapes) is not a failure: motorpool verifies the numerics itself.
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always", torch.jit.TracerWarning)
            try:
                traced = torch.jit.trace(_FlatOutputs(model).eval(), example_inputs, check_trace=False, strict=False)
            except Exception as exc:
                raise CompileError(f"torch.jit.trace failed: {type(exc).__name__}: {exc}",
                                   backend=self.name) from exc
        tracer_warnings = sorted({str(w.message).splitlines()[0] for w in caught
                                  if issubclass(w.category, torch.jit.TracerWarning)})
        if tracer_warnings:
            info["tracer_warnings"] = tracer_warnings
        try:
            module = torch.jit.freeze(traced.eval())
            info["frozen"] = True
        except Exception as exc:  # noqa: BLE001 - an unfrozen trace still runs; say why
            module = traced
            info["frozen"] = False
            info["freeze_error"] = f"{type(exc).__name__}: {exc}"
        return TorchScriptRunner(module, device=options.device, precision=options.precision, info=info)

    def code_in_artifact(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        name = Path(str(metadata.get("file", ARTIFACT))).name
        return [f"{name} is a TorchScript archive: a program whose __setstate__ and methods run when it loads "
                "(it can read and write files through aten::from_file)"]

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        path = artifact_file(directory, metadata.get("file", ARTIFACT))
        module = torch.jit.load(str(path), map_location=options.device)
        return TorchScriptRunner(module, device=options.device, precision=options.precision,
                                 info={"runtime": "TorchScript", "frozen": metadata.get("frozen", False)})


@hookimpl
def motorpool_register_backends():
    return [BackendRecord(TorchScriptBackend)]
