"""Small helpers the PyTorch-based backends share."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.utils._pytree as pytree


def model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def place(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """The model on ``device``, without moving the caller's model (a copy when it lives elsewhere)."""
    if model_device(model) == torch.device(device):
        return model
    return copy.deepcopy(model).to(device)


def flatten_outputs(out: Any) -> list[Any]:
    return pytree.tree_flatten(out)[0]


def run_eager(model: torch.nn.Module, inputs: list[Any]) -> Any:
    with torch.inference_mode():
        return model(*inputs)


def torch_devices() -> list[str]:
    """The devices this torch build can use here, best first after the CPU."""
    devices = ["cpu"]
    try:
        if torch.cuda.is_available():
            devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a broken driver is "no CUDA device"
        pass
    try:
        if torch.backends.mps.is_available():
            devices.append("mps")
    except Exception:  # noqa: BLE001
        pass
    return devices


def host_device(device: str) -> str:
    """The torch device that holds a backend device's input and output tensors: the device itself when
    torch knows it (``cuda:0``, ``mps``), else host memory (Core ML's ``ane``, ``gpu``, ``all``)."""
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        return "cpu"
    return device


def torch_availability():
    from .backend import Availability

    devs = torch_devices()
    preferred = [d for d in devs if d != "cpu"] + ["cpu"]
    return Availability.ok(version=torch.__version__, devices=preferred, versions={"torch": torch.__version__})


class fp32_strict:
    """On CUDA, keep fp32 as fp32: TF32 off for matmul and cuDNN for the duration of a call."""

    def __init__(self, device: str):
        self.active = device.startswith("cuda")

    def __enter__(self):
        if self.active:
            self._saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        if self.active:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved
        return False


def export_program(model: torch.nn.Module, spec, *, device: str):
    """``torch.export`` the model with the spec's named dynamic dimensions.

    Exported from fresh inputs of size 2 on every dynamic dimension, so that no size-1 example pins a
    dimension that should stay dynamic.
    """
    from torch.export import Dim, export

    dims = {name: Dim(name, min=1) for name in spec.dynamic_dims}
    sizes = {name: max(2, spec.example_sizes.get(name, 2)) for name in spec.dynamic_dims}
    inputs = tuple(spec.random_inputs(sizes=sizes, device=device))
    dynamic_shapes = tuple({axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} or None
                           for t in spec.inputs)
    return export(model, inputs, dynamic_shapes=dynamic_shapes if spec.dynamic_dims else None)


class TorchRunner:
    """Runs a torch callable under inference mode and flattens its outputs. Mixin for torch-based runners."""

    profiler_name = "torch.profiler"

    def _init_torch(self, module, *, device: str, precision: str, thread_safe: bool = True, info=None):
        self.module = module
        self.device = device
        self.precision = precision
        self.thread_safe = thread_safe
        self.info = dict(info or {})
        self._strict = fp32_strict(device) if precision == "fp32" else None

    def run(self, inputs: list[Any]) -> list[Any]:
        with torch.inference_mode():
            if self._strict is not None and self._strict.active:
                with self._strict:
                    return flatten_outputs(self.module(*inputs))
            return flatten_outputs(self.module(*inputs))

    def profile_operators(self, inputs: list[Any], *, top: int = 10, calls: int = 5) -> list[Any]:
        """torch.profiler's operator table over ``calls`` runs (see ``Runner.profile_operators``)."""
        from .profile import torch_operator_profile

        return torch_operator_profile(self.run, inputs, top=top, calls=calls, device=self.device)


def save_exported(program, module: torch.nn.Module, spec, *, device: str, path, backend: str) -> None:
    """Write ``program`` (or, when None, ``torch.export`` of ``module``) as a ``.pt2`` file.

    A model torch.export cannot capture raises :class:`~motorpool.UnsupportedError` saying so.
    """
    from .errors import UnsupportedError

    if program is None:
        try:
            program = export_program(module, spec, device=device)
        except Exception as exc:  # noqa: BLE001 - the exporter's reason is the answer
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            raise UnsupportedError(
                f"cannot save a {backend} engine: torch.export cannot capture this model "
                f"({type(exc).__name__}: {first_line}). Save a torchscript or onnxruntime engine instead, "
                f"or make the model exportable", backend=backend) from exc
    torch.export.save(program, path)
