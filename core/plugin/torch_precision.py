"""Reduced precision for the PyTorch-based backends: model -> model transforms, no backend imported.

What each precision means here (the backends call :func:`prepare_torch_precision`):

* ``fp16`` / ``bf16``: the weights are cast once (no autocast, which re-casts weights on every call) and
  the model is wrapped so that floating inputs are cast to the compute dtype and floating outputs back to
  the model's own dtype: callers keep passing and receiving fp32 tensors.
* ``int8`` dynamic (no calibration): ``torch.ao.quantization.quantize_dynamic``: ``Linear``, ``LSTM`` and
  ``GRU`` weights become int8, activations are quantized at run time.
* ``int8`` static (``calibration=`` an iterable of example inputs): FX graph mode quantization with the
  x86 backend's default qconfig; ``prepare_fx`` fuses Conv/BatchNorm/ReLU and Linear/ReLU, observers see
  the calibration batches, ``convert_fx`` emits quantized kernels (fbgemm/oneDNN).
* ``int8`` for Inductor (``torch_compile``): PT2E (``torch.export`` -> ``prepare_pt2e`` with
  ``X86InductorQuantizer`` -> ``convert_pt2e``), the path Inductor lowers to fused int8 kernels. PT2E moved
  from ``torch.ao`` to ``torchao``; without ``torchao`` installed this says so.

torch 2.13 still ships ``torch.ao.quantization`` (eager and FX modes) but marks it deprecated; its warnings
are silenced inside these helpers only, because the caller asked for exactly this and cannot act on them.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.utils._pytree as pytree
from torch import nn

from .calibration import calibration_batches
from .contract import Option
from .errors import InputError, UnsupportedError
from .helpers import first_line

#: module types that dynamic int8 quantizes
DYNAMIC_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM, nn.GRU)
#: the dtypes behind the precision names
CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: ``options["int8"]`` values: how int8 is done ("auto": static when calibration is given, else dynamic)
INT8_MODES = ("auto", "dynamic", "static")
#: the option every backend built on these helpers takes (declare it in ``Backend.options``)
INT8_OPTION = Option("int8", str, "auto", "how int8 is made: dynamic (torch.ao, no data), static (calibrated; needs "
                     "calibration=), auto (static when calibration is given)", choices=INT8_MODES)


@dataclass
class Prepared:
    """A model transformed for a precision, and what was done (goes into the engine's report)."""

    module: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _quiet_ao():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_channel.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")
        yield


# -- fp16 / bf16 ------------------------------------------------------------------------------------------

def _float_dtype(model: nn.Module) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.dtype.is_floating_point:
            return t.dtype
    return torch.float32


class CastPrecision(nn.Module):
    """``model`` with its weights in ``dtype``; floating inputs are cast in, floating outputs cast back.

    The engine's input spec keeps the model's dtypes, so callers see no difference but speed and rounding.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, output_dtype: torch.dtype = torch.float32,
                 n_inputs: int | None = None):
        super().__init__()
        self.model = model
        self.compute_dtype = dtype
        self.output_dtype = output_dtype
        if n_inputs is not None:
            # torch.export binds inputs by the forward's signature: give this wrapper the model's arity,
            # so that it exports (and saves) like the model itself rather than as one *inputs tuple
            def forward(*inputs):
                return CastPrecision.forward(self, *inputs)
            forward.__signature__ = inspect.Signature(
                [inspect.Parameter(f"input{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(n_inputs)])
            self.forward = forward

    def forward(self, *inputs):
        cast = [x.to(self.compute_dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                for x in inputs]
        out = self.model(*cast)
        return pytree.tree_map(lambda t: t.to(self.output_dtype)
                               if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)


def cast_model(model: nn.Module, precision: str, n_inputs: int | None = None) -> nn.Module:
    """A copy of ``model`` computing in fp16/bf16, called with and returning the model's own float dtype.

    ``n_inputs`` fixes the wrapper's signature (needed to ``torch.export`` it)."""
    try:
        dtype = CAST_DTYPES[precision]
    except KeyError:
        raise ValueError(f"cast_model: precision {precision!r} is not one of {', '.join(CAST_DTYPES)}") from None
    out_dtype = _float_dtype(model)
    return CastPrecision(copy.deepcopy(model).to(dtype).eval(), dtype, out_dtype, n_inputs).eval()


# -- int8 ------------------------------------------------------------------------------------------------

def _dynamic_targets(model: nn.Module) -> set[str]:
    """Names of the submodules dynamic int8 should quantize.

    Linears directly inside ``nn.TransformerEncoderLayer``/``DecoderLayer`` are left alone: the layer's
    fast-path check reads ``linear.weight`` as a tensor, and a dynamically quantized Linear's ``weight`` is
    a method, so the layer would crash on its first call. ``NonDynamicallyQuantizableLinear`` (the
    attention output projection) is excluded for the same kind of reason by torch itself.
    """
    skip_parents = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    skipped: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, skip_parents):
            skipped.update(f"{name}.{child}" if name else child for child, _ in mod.named_children())
    targets = set()
    for name, mod in model.named_modules():
        if name in skipped or not isinstance(mod, DYNAMIC_TYPES):
            continue
        if type(mod).__name__ == "NonDynamicallyQuantizableLinear":
            continue
        targets.add(name)
    return targets


def quantize_dynamic_int8(model: nn.Module) -> Prepared:
    """Dynamic int8 (int8 weights, activations quantized per call) of a copy of ``model``.

    Raises :class:`UnsupportedError` when the model has no Linear/LSTM/GRU to quantize (a CNN needs
    static int8 with a calibration set instead).
    """
    targets = _dynamic_targets(model)
    if not targets:
        in_layers = sum(isinstance(m, DYNAMIC_TYPES) for m in model.modules())
        why = (f" ({in_layers} Linear layers sit inside nn.Transformer*Layer or are attention projections, "
               "whose fast path needs float weights)" if in_layers else "")
        raise UnsupportedError("dynamic int8 quantizes Linear, LSTM and GRU layers and this model has none "
                               f"that can be quantized{why}; pass calibration=[...] for static int8")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    with _quiet_ao():
        # per-channel weight scales for Linear: per-tensor scales cost the pretrained MiniLM-L6 0.95 mean
        # pooled cosine on real sentences, per-channel 0.98; recurrent layers take per-tensor only
        spec = {n: per_channel_dynamic_qconfig if isinstance(model.get_submodule(n), nn.Linear)
                else default_dynamic_qconfig for n in targets}
        qmodel = quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)
    return Prepared(qmodel.eval(), {"int8": "dynamic", "quantizer": "torch.ao quantize_dynamic (Linear weights "
                                    "per channel)",
                                    "quantized_layers": len(targets), "engine": torch.backends.quantized.engine})


def _qengine() -> str:
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn", "qnnpack"):
        if name in engines:
            return name
    raise UnsupportedError(f"this torch build has no quantized CPU engine (it has {engines})")


def quantize_static_int8(model: nn.Module, example_inputs: tuple, calibration: Iterable[Any], *,
                         spec=None) -> Prepared:
    """Static int8 of a copy of ``model`` through FX graph mode: fuse, observe ``calibration``, convert.

    The FX tracer needs a model without data-dependent Python control flow; one it cannot trace raises
    :class:`UnsupportedError` with the tracer's reason.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = calibration_batches(calibration, len(example_inputs), spec=spec)
    engine = _qengine()
    torch.backends.quantized.engine = engine
    with _quiet_ao():
        try:
            prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(engine),
                                  tuple(example_inputs))
        except Exception as exc:  # noqa: BLE001 - symbolic tracing fails in many ways; the reason matters
            raise UnsupportedError(f"static int8 (FX graph mode) cannot trace this model: "
                                   f"{first_line(exc)}") from exc
        try:
            with torch.inference_mode():
                for batch in batches:
                    prepared(*batch)
            qmodel = convert_fx(prepared)
            with torch.inference_mode():
                qmodel(*example_inputs)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedError(f"static int8 (FX graph mode) failed on this model: "
                                   f"{first_line(exc)}") from exc
    return Prepared(qmodel.eval(), {"int8": "static", "quantizer": f"torch.ao FX ({engine} qconfig, fused)",
                                    "calibration_batches": len(batches), "engine": engine})


def pt2e_available() -> str | None:
    """None when PT2E quantization (torchao) can be used, else why not with the fix."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return ("int8 for torch.compile uses PT2E quantization, which moved from torch.ao to torchao; "
                'torchao is not installed (fix: pip install "motorpool[quantize]")')
    return None


def quantize_pt2e_int8(model: nn.Module, example_inputs: tuple, calibration: Iterable[Any] | None, *,
                       spec=None) -> Prepared:
    """int8 for Inductor: ``torch.export`` -> ``prepare_pt2e(X86InductorQuantizer)`` -> calibrate -> convert.

    Without calibration the quantizer's dynamic config is used (Linear only, activations per call).
    The result is meant to be passed to ``torch.compile``, which lowers the q/dq pattern to int8 kernels.
    """
    problem = pt2e_available()
    if problem:
        raise UnsupportedError(problem)
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except Exception as exc:  # noqa: BLE001 - a broken torchao is an answer, not a crash
        raise UnsupportedError(f"torchao is installed but its PT2E quantizer does not import: "
                               f"{type(exc).__name__}: {exc}") from exc
    dynamic = calibration is None
    batches = [tuple(example_inputs)] if dynamic else calibration_batches(calibration, len(example_inputs),
                                                                          spec=spec)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=dynamic))
    try:
        dynamic_shapes = None
        if spec is not None and spec.dynamic_dims:
            from torch.export import Dim
            dims = {name: Dim(name, min=1) for name in spec.dynamic_dims}
            dynamic_shapes = tuple({a: dims[d] for a, d in enumerate(t.shape) if isinstance(d, str)} or None
                                   for t in spec.inputs)
        example = tuple(example_inputs)
        if spec is not None and spec.dynamic_dims:
            # export from size >= 2 on every dynamic dimension, so that no size-1 example pins one
            sizes = {n: max(2, spec.example_sizes.get(n, 2)) for n in spec.dynamic_dims}
            example = tuple(spec.random_inputs(sizes=sizes, device=spec.device))
        graph = torch.export.export(copy.deepcopy(model).eval(), example, dynamic_shapes=dynamic_shapes).module()
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for batch in batches:
                prepared(*batch)
        qmodel = convert_pt2e(prepared)
    except UnsupportedError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedError(f"int8 through PT2E failed on this model: "
                               f"{first_line(exc)}") from exc
    return Prepared(qmodel, {"int8": "dynamic" if dynamic else "static",
                             "quantizer": "torchao PT2E X86InductorQuantizer",
                             "calibration_batches": 0 if dynamic else len(batches)})


def int8_mode(options_extra: dict[str, Any] | None, calibration: Any) -> str:
    """"dynamic" or "static", from ``options={"int8": ...}`` and whether calibration was given."""
    mode = (options_extra or {}).get("int8", "auto")
    if mode not in INT8_MODES:
        raise ValueError(f'options["int8"] is {mode!r}; choose one of: {", ".join(INT8_MODES)}')
    if mode == "auto":
        return "static" if calibration is not None else "dynamic"
    if mode == "static" and calibration is None:
        raise InputError('options["int8"]="static" needs calibration= (an iterable of example inputs)',
                         input="calibration", expected="iterable of input batches", got=None)
    return mode


def prepare_torch_precision(model: nn.Module, example_inputs: tuple, options, *, backend: str,
                            pt2e: bool = False) -> Prepared:
    """The model to hand to a PyTorch-based backend for ``options.precision``.

    ``options`` is the backend's :class:`~motorpool.CompileOptions`; ``pt2e=True`` asks for the PT2E int8
    flavour Inductor lowers (``torch_compile``) instead of eager-mode/FX kernels. Errors name ``backend``.
    """
    precision = options.precision
    try:
        if precision == "fp32":
            return Prepared(model, {})
        if precision in CAST_DTYPES:
            return Prepared(cast_model(model, precision, len(example_inputs)), {"cast": f"weights cast to {precision}, "
                                                           "inputs cast in, outputs cast back"})
        if precision == "int8":
            if not str(options.device).startswith("cpu"):
                raise UnsupportedError(f"int8 on {backend} runs on the CPU quantized kernels only, "
                                       f"not on {options.device}")
            mode = int8_mode(options.extra, options.calibration)
            if pt2e:
                return quantize_pt2e_int8(model, example_inputs,
                                          options.calibration if mode == "static" else None, spec=options.spec)
            if mode == "static":
                return quantize_static_int8(model, example_inputs, options.calibration, spec=options.spec)
            return quantize_dynamic_int8(model)
    except UnsupportedError as exc:
        if exc.backend is None:
            exc.backend = backend
        raise
    raise UnsupportedError(f"{backend} has no path for precision {precision!r}", backend=backend)


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state (parameters, buffers, packed quantized weights) as ``torch.save`` writes them."""
    import io

    buf = io.BytesIO()
    with _quiet_ao():
        torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes
