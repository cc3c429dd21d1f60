"""What the PyTorch-facing backends share: device placement, output flattening, the one ``torch.export``
wrapper, quiet exporters, a tensor's NumPy view, and the first line of an exception for a report.

Every built-in backend reaches these through :mod:`motorpool.plugin`, exactly as a third-party one does.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import types
import warnings
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from .contract import Availability
from .errors import UnsupportedError
from .operator_stats import torch_operator_profile


# -- devices and placement ---------------------------------------------------------------------------------

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


def torch_availability() -> Availability:
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


# -- outputs and conversions ---------------------------------------------------------------------------------

def flatten_outputs(out: Any) -> list[Any]:
    return pytree.tree_flatten(out)[0]


def output_count(model: torch.nn.Module, examples: tuple) -> int:
    with torch.inference_mode():
        return len(flatten_outputs(model(*examples)))


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array on the host (bfloat16, which NumPy lacks, as float32)."""
    try:  # the common case (CPU, no grad, a NumPy dtype) in half the time of the checks below
        return x.numpy()
    except (TypeError, RuntimeError):
        pass
    x = x.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.numpy()


def first_line(exc: BaseException, limit: int = 400) -> str:
    """A short, one-line reason for a report: the exception type and the first line of its message."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if len(line) > limit:
        line = line[:limit] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# -- graph capture -----------------------------------------------------------------------------------------

class _OwnFrame(torch.nn.Module):
    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.train(module.training)

    def forward(self, *inputs):
        return self.module(*inputs)


def own_frame(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` behind a ``forward`` whose code object belongs to this call alone, for ``torch.compile``.

    dynamo keeps its compiled graphs on the code object of the frame it compiles, at most
    ``torch._dynamo.config.recompile_limit`` (8) of them. Engines compiled from modules of one class (two
    ConvNeXts, or a ResNet and a ConvNeXt behind the same wrapper class) would otherwise share that one cache,
    and past the limit a call silently runs eager: in a benchmark of three models, zentorch's ConvNeXt ran at
    0.95x eager after a ResNet, 1.80x alone."""
    frame = _OwnFrame(module)
    fn = _OwnFrame.forward
    code = fn.__code__.replace()  # a new code object: a cache of its own
    frame.forward = types.MethodType(types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__,
                                                        fn.__closure__), frame)
    return frame


class FlatOutputs(torch.nn.Module):
    """``model`` with its outputs flattened to a tuple in pytree order, so that a runtime's output list is
    exactly what the Engine unflattens with the model's treespec (dict outputs, nested tuples)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        # A new module starts in training mode, and the TorchScript ONNX exporter restores the wrapper's mode
        # recursively after exporting: the user's eval model would come back in training mode (dropout on).
        self.train(model.training)

    def forward(self, *inputs):
        return tuple(pytree.tree_flatten(self.model(*inputs))[0])


def capture_inputs(spec, examples: tuple | None = None, *, device: str | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs to capture a graph from: size >= 2 on every dynamic dimension.

    torch.export specialises sizes 0 and 1, so a batch-1 example would pin the batch; fresh random inputs
    of the spec at size 2 keep every named dimension dynamic.
    """
    device = device or spec.device
    if not spec.dynamic_dims and examples is not None:
        return tuple(x.to(device) for x in examples)
    sizes = {name: max(2, spec.example_sizes.get(name, 2)) for name in spec.dynamic_dims}
    return tuple(spec.random_inputs(sizes=sizes, device=device))


def _dim_identifier(name: str) -> str:
    # torch.export.Dim names must be Python identifiers
    ident = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return ident if ident and not ident[0].isdigit() else f"d_{ident}"


def export_program(model: torch.nn.Module, spec, examples: tuple | None = None, *, device: str | None = None,
                   flat: bool = False) -> "torch.export.ExportedProgram":
    """``torch.export`` of the model with the spec's named dynamic dimensions (the one wrapper every backend
    uses). ``flat=True`` exports :class:`FlatOutputs` (model), for runtimes that return a flat output list."""
    from torch.export import Dim

    dims = {name: Dim(_dim_identifier(name), min=1) for name in spec.dynamic_dims}
    per_input = tuple({axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} or None
                      for t in spec.inputs)
    module = FlatOutputs(model) if flat else model
    # a forward taking *inputs (FlatOutputs, a wrapped exported program) gets one entry holding the tuple
    dynamic_shapes = ((per_input,) if _takes_varargs(module) else per_input) if spec.dynamic_dims else None
    with quiet_exporters():
        return torch.export.export(module, capture_inputs(spec, examples, device=device), dynamic_shapes=dynamic_shapes)


def _takes_varargs(module: torch.nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_POSITIONAL for p in params)


def save_exported(program, module: torch.nn.Module, spec, *, device: str, path, backend: str) -> None:
    """Write ``program`` (or, when None, ``torch.export`` of ``module``) as a ``.pt2`` file.

    A model torch.export cannot capture raises :class:`~motorpool.UnsupportedError` saying so.
    """
    if program is None:
        try:
            program = export_program(module, spec, device=device)
        except Exception as exc:  # noqa: BLE001 - the exporter's reason is the answer
            raise UnsupportedError(
                f"cannot save a {backend} engine: torch.export cannot capture this model "
                f"({first_line(exc)}). Save a torchscript or onnxruntime engine instead, "
                f"or make the model exportable", backend=backend) from exc
    torch.export.save(program, path)


@contextlib.contextmanager
def quiet_loggers(*names: str):
    """Only errors from these loggers for the duration."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def quiet_exporters():
    """Silence the exporters' chatter (missing torchvision ops, tracer notes) for the duration."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with quiet_loggers("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript",
                           "torch._dynamo", "torch._subclasses"):
            yield


# -- running torch modules -------------------------------------------------------------------------------

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
        return torch_operator_profile(self.run, inputs, top=top, calls=calls, device=self.device)
