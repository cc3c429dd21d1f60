"""Reduced precision for the ``onnxruntime`` backend, ONNX Runtime's own way.

- fp16: ``onnxruntime.transformers.float16`` converts weights and compute to float16 and keeps float32
  inputs and outputs (``keep_io_types``), so the engine's interface does not change.
- int8 static: ``quantize_static`` in QDQ format (per-channel, S8S8) calibrated on ``calibration``.
- int8 dynamic (no calibration set given): ``quantize_dynamic`` on MatMul-type ops only (it rewrites
  Gemm as MatMul itself); ConvInteger (dynamic int8 convolution) is slower than fp32 convolution on CPUs,
  so Conv stays fp32 unless asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from motorpool.plugin import CompileError, UnsupportedError, calibration_feeds, first_line

from .export import EXTERNAL_DATA_THRESHOLD, save_model_proto

#: dynamic int8 op types by default; Conv (ConvInteger) only when options.extra["int8_op_types"] names it
DYNAMIC_OP_TYPES = ("MatMul", "Attention", "LSTM", "Gather")
#: static int8 op types by default: the compute-heavy ops. Quantizing everything (Where, Add, Softmax)
#: also quantizes attention masks that hold -inf, and a transformer's output goes to noise
STATIC_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: at most this many calibration items are used for static int8
MAX_CALIBRATION_ITEMS = 256


def convert(path: Path, precision: str, spec, *, calibration: Iterable[Any] | None, extra: dict[str, Any],
            workdir: Path) -> dict[str, Any]:
    """Turn the fp32 model at ``path`` into ``precision`` in place (``workdir`` holds the intermediates).

    Returns what was done, for the runner's info.
    """
    if precision == "fp32":
        return {}
    if precision == "fp16":
        _install(_to_fp16(path, workdir), path)
        return {"fp16": "onnxruntime.transformers.float16 (fp32 inputs/outputs kept)"}
    if precision == "int8":
        result, info = _to_int8(path, spec, calibration, extra, workdir)
        _install(result, path)
        return info
    raise UnsupportedError(f"onnxruntime has no native {precision} path here (it supports fp32, fp16, int8)",
                           backend="onnxruntime")


def _to_fp16(path: Path, workdir: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(path))
    try:
        half = convert_float_to_float16(proto, keep_io_types=True,
                                        disable_shape_infer=_too_big_for_shape_inference(proto))
    except Exception as exc:
        raise CompileError(f"onnxruntime fp16 conversion failed: {first_line(exc)}", backend="onnxruntime") from exc
    out = workdir / "model.fp16.onnx"
    save_model_proto(half, out)
    return out


def _too_big_for_shape_inference(proto) -> bool:
    return sum(len(t.raw_data) for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD


def _to_int8(path: Path, spec, calibration, extra: dict[str, Any], workdir: Path) -> tuple[Path, dict[str, Any]]:
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    mode = extra.get("int8") if extra.get("int8") not in (None, "auto") else ("static" if calibration is not None else "dynamic")
    if mode not in ("static", "dynamic"):
        raise UnsupportedError(f"options int8={mode!r}: choose 'static' (with calibration=...) or 'dynamic'",
                               backend="onnxruntime")
    if mode == "static" and calibration is None:
        raise UnsupportedError('options int8="static" needs calibration=... (an iterable of example input tuples)',
                               backend="onnxruntime")
    src, pre_note = _preprocess(path, workdir)
    out = workdir / "model.int8.onnx"
    info: dict[str, Any] = {"int8_mode": mode}
    if pre_note:
        info["int8_preprocess"] = pre_note
    per_channel = bool(extra.get("int8_per_channel", True))
    try:
        if mode == "dynamic":
            op_types = list(extra.get("int8_op_types") or DYNAMIC_OP_TYPES)
            src = _unshare_gemm_weights(src, workdir)
            quantize_dynamic(str(src), str(out), op_types_to_quantize=op_types, per_channel=per_channel,
                             weight_type=QuantType.QInt8)
            info.update(int8_op_types=op_types, int8_method="onnxruntime.quantization.quantize_dynamic")
        else:
            reader = _reader(spec, calibration)
            op_types = list(extra.get("int8_op_types") or STATIC_OP_TYPES)
            quantize_static(str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=op_types,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            info.update(int8_op_types=op_types, int8_method="onnxruntime.quantization.quantize_static (QDQ, S8S8)",
                        int8_calibration_items=reader.count)
    except (CompileError, UnsupportedError):
        raise
    except Exception as exc:
        raise CompileError(f"onnxruntime int8 ({mode}) quantization failed: {first_line(exc)}",
                           backend="onnxruntime") from exc
    info["int8_quantized_nodes"] = _count_quantized(out)
    if info["int8_quantized_nodes"] == 0:
        raise UnsupportedError(f"onnxruntime int8 ({mode}) quantized no node of this model (op types "
                               f"{info.get('int8_op_types', 'all')}); it would run in fp32. Pass "
                               "calibration=... for static int8, or options={'int8_op_types': [...]}",
                               backend="onnxruntime")
    return out, info


def _preprocess(path: Path, workdir: Path) -> tuple[Path, str | None]:
    """``quant_pre_process`` (symbolic shape inference, graph cleanup) as ONNX Runtime recommends.

    Quantizing works without it, only less well; a model it cannot handle is quantized as exported.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = workdir / "model.pre.onnx"
    try:
        quant_pre_process(str(path), str(out), skip_symbolic_shape=False)
        return out, None
    except Exception as exc:  # noqa: BLE001 - see docstring
        return path, f"quant_pre_process skipped: {first_line(exc)}"


def _unshare_gemm_weights(path: Path, workdir: Path) -> Path:
    """Give every Gemm its own weight initializer.

    ``quantize_dynamic`` rewrites Gemm as MatMul and transposes its weight in place; a weight that two
    Gemm nodes share (tied weights, or identical weights the exporter deduplicated, as in a freshly
    initialised ``nn.TransformerEncoder``) gets transposed twice and the model computes garbage.
    """
    import onnx

    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    seen: set[str] = set()
    changed = False
    for n in proto.graph.node:
        for slot, name in enumerate(n.input):
            if name not in inits:
                continue
            if name in seen and n.op_type == "Gemm" or (name in seen and _gemm_uses(proto, name)):
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{n.name or len(seen)}"
                proto.graph.initializer.append(copy)
                n.input[slot] = copy.name
                changed = True
            seen.add(name)
    if not changed:
        return path
    out = workdir / "model.unshared.onnx"
    save_model_proto(proto, out)
    return out


def _gemm_uses(proto, name: str) -> bool:
    return any(n.op_type == "Gemm" and name in n.input for n in proto.graph.node)


def _count_quantized(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    int_ops = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear", "QLinearMatMul",
               "QLinearConv", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention", "MatMulIntegerToFloat"}
    return sum(n.op_type in int_ops for n in proto.graph.node)


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over motorpool's calibration iterable."""

    def __init__(self, names: list[str], items: list[list]):
        self._names = names
        self._items = items
        self._it = iter(items)
        self.count = len(items)

    def get_next(self):
        item = next(self._it, None)
        return None if item is None else dict(zip(self._names, item))

    def rewind(self):
        self._it = iter(self._items)


def _reader(spec, calibration: Iterable[Any]):
    from onnxruntime.quantization import CalibrationDataReader

    items = calibration_feeds(spec, calibration, limit=MAX_CALIBRATION_ITEMS, backend="onnxruntime",
                              what="static int8")
    CalibrationDataReader.register(_Reader)  # an ABC: a virtual subclass is enough for its isinstance check
    return _Reader(list(spec.names), items)


def _install(result: Path, path: Path) -> None:
    """Make ``result`` the model at ``path``: one ``model.onnx`` (+ its external data) and nothing else."""
    import onnx

    proto = onnx.load(str(result))
    for f in path.parent.iterdir():
        f.unlink()
    save_model_proto(proto, path)
