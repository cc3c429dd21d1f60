"""int8 for the ``openvino`` backend, NNCF's way.

With a calibration set: ``nncf.quantize`` (post-training static quantization: int8 weights and
activations, FakeQuantize nodes the CPU plugin runs as int8 kernels), with ``ModelType.TRANSFORMER`` when
the model has attention. Without one: ``nncf.compress_weights`` (weight-only int8; activations stay float,
and the CPU plugin quantizes them on the fly where it can), said in ``info["int8_mode"]``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from motorpool.plugin import CompileError, UnsupportedError, calibration_feeds, first_line

MAX_CALIBRATION_ITEMS = 300
#: op types that mark a model NNCF should quantize as a transformer
_ATTENTION_OPS = {"Softmax", "ScaledDotProductAttention"}


def quantize(ov_model, spec, calibration: Iterable[Any] | None, extra: dict[str, Any]):
    """Return (int8 ov.Model, info). Raises :class:`UnsupportedError` when nothing could be quantized."""
    import nncf

    nncf.set_log_level(logging.ERROR)  # its INFO tables and progress bars are not the user's business
    mode = extra.get("int8") if extra.get("int8") not in (None, "auto") else ("static" if calibration is not None else "weights")
    if mode not in ("static", "weights"):
        raise UnsupportedError(f"options int8={mode!r} on openvino: choose 'static' (NNCF quantization, needs "
                               "calibration=...) or 'weights' (weight-only int8)", backend="openvino")
    if mode == "static" and calibration is None:
        raise UnsupportedError("int8 on openvino needs calibration=... (NNCF static quantization), or "
                               "options={'int8': 'weights'} for weight-only int8", backend="openvino")
    try:
        if mode == "static":
            items = _items(spec, calibration)
            transformer = (str(extra.get("model_type", "")).lower() == "transformer"
                           or any(op.get_type_name() in _ATTENTION_OPS for op in ov_model.get_ops()))
            kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
            quantized = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items), **kwargs)
            info = {"int8_mode": "static", "int8_method": "nncf.quantize" + (" (transformer)" if transformer else ""),
                    "int8_calibration_items": len(items)}
        else:
            quantized = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            info = {"int8_mode": "weights", "int8_method": "nncf.compress_weights (weight-only int8)"}
    except (CompileError, UnsupportedError):
        raise
    except Exception as exc:
        raise CompileError(f"NNCF int8 ({mode}) failed: {first_line(exc)}", backend="openvino") from exc
    count = _int8_nodes(quantized)
    if count == 0:
        raise UnsupportedError(f"NNCF int8 ({mode}) quantized no layer of this model; it would run in float",
                               backend="openvino")
    info["int8_quantized_nodes"] = count
    return quantized, info


def _items(spec, calibration: Iterable[Any]) -> list[list]:
    return calibration_feeds(spec, calibration, limit=MAX_CALIBRATION_ITEMS, backend="openvino",
                             what="NNCF static int8")


def _int8_nodes(ov_model) -> int:
    """FakeQuantize nodes (static) or int8 weight constants (weight-only) in the model."""
    count = 0
    for op in ov_model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            count += 1
        elif kind == "Constant" and str(op.get_output_element_type(0)) in ("i8", "u8", "<Type: 'int8_t'>",
                                                                           "<Type: 'uint8_t'>"):
            count += 1
    return count
