"""PyTorch -> ONNX for the ``onnxruntime`` backend: the dynamo exporter first, the TorchScript exporter second.

Inputs are named after the engine's input spec with its named dynamic dimensions; outputs are
``output0..N`` in torch pytree flatten order (see :class:`FlatOutputs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from motorpool.plugin import CompileError, FlatOutputs, export_program, first_line, output_count, quiet_exporters

MODEL_FILE = "model.onnx"
#: protobuf cannot hold more than 2 GiB; above this the weights go to an external data file
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: the opset the TorchScript exporter writes (the dynamo exporter picks its own)
TORCHSCRIPT_OPSET = 17
EXPORTERS = ("dynamo", "torchscript")


@dataclass
class Exported:
    path: Path
    exporter: str
    input_names: list[str]
    output_names: list[str]
    attempts: list[dict[str, Any]] = field(default_factory=list)


def output_names_for(count: int) -> list[str]:
    return [f"output{i}" for i in range(count)]


def export_onnx(model: torch.nn.Module, examples: tuple, spec, directory: Path, *,
                exporters: tuple[str, ...] = EXPORTERS, opset: int | None = None) -> Exported:
    """Export ``model`` to ``directory/model.onnx``, trying ``exporters`` in order.

    Every attempt is recorded (``attempts``: exporter, ok, error); when all fail, :class:`CompileError`
    carries every reason.
    """
    unknown = [e for e in exporters if e not in EXPORTERS]
    if unknown or not exporters:
        raise ValueError(f"exporters {list(exporters)!r}: choose from {', '.join(EXPORTERS)}")
    path = directory / MODEL_FILE
    in_names = list(spec.names)
    out_names = output_names_for(output_count(model, examples))
    attempts: list[dict[str, Any]] = []
    for exporter in exporters:
        for stale in directory.iterdir():  # a failed attempt must not leave files behind for the next
            stale.unlink()
        try:
            if exporter == "dynamo":
                _export_dynamo(model, examples, spec, path, in_names, out_names, opset)
            else:
                _export_torchscript(model, examples, spec, path, in_names, out_names, opset)
            _check_interface(path, in_names, out_names)
        except Exception as exc:  # noqa: BLE001 - each exporter's failure is a reason in the report
            attempts.append({"exporter": exporter, "ok": False, "error": first_line(exc)})
            continue
        attempts.append({"exporter": exporter, "ok": True, "error": None})
        return Exported(path, exporter, in_names, out_names, attempts)
    raise CompileError("torch.onnx.export failed with every exporter: " +
                       "; ".join(f"{a['exporter']}: {a['error']}" for a in attempts), backend="onnxruntime")


def _export_dynamo(model, examples, spec, path: Path, in_names, out_names, opset) -> None:
    program = export_program(model, spec, examples, flat=True)
    with quiet_exporters():
        onnx_program = torch.onnx.export(program, (), dynamo=True, input_names=in_names, output_names=out_names,
                                         opset_version=opset, optimize=True, verbose=False)
        _name_dynamic_dims(onnx_program.model, spec)
        # ONNXProgram.save decides on external data itself when the weights pass protobuf's 2 GiB limit
        onnx_program.save(str(path))


def _name_dynamic_dims(ir_model, spec) -> None:
    """Give the graph's symbolic dims the spec's names ('batch' rather than torch's 's31') on its inputs
    and outputs, so that the file documents itself."""
    renames: dict[str, str] = {}
    for value, t in zip(ir_model.graph.inputs, spec.inputs):
        if value.shape is None:
            continue
        for have, want in zip(value.shape, t.shape):
            if isinstance(want, str) and not isinstance(have, int) and getattr(have, "value", None):
                renames.setdefault(have.value, want)
    if not renames:
        return
    ir = _ir_module()
    for value in list(ir_model.graph.inputs) + list(ir_model.graph.outputs):
        if value.shape is not None:
            value.shape = ir.Shape([ir.SymbolicDim(renames.get(getattr(d, "value", None), d.value))
                                    if not isinstance(d, int) else d for d in value.shape])


def _ir_module():
    try:
        import onnx_ir as ir  # the IR torch.onnx builds on
    except ImportError:
        import onnxscript.ir as ir  # older releases keep it here
    return ir


def _export_torchscript(model, examples, spec, path: Path, in_names, out_names, opset) -> None:
    dynamic_axes = {t.name: {axis: d for axis, d in enumerate(t.shape) if isinstance(d, str)}
                    for t in spec.inputs}
    dynamic_axes = {k: v for k, v in dynamic_axes.items() if v}
    # grad mode stays on: under no_grad nn.TransformerEncoder takes its fused fast path, which this
    # exporter cannot translate (aten::_transformer_encoder_layer_fwd)
    with quiet_exporters(), torch.enable_grad():
        torch.onnx.export(FlatOutputs(model), tuple(examples), str(path), dynamo=False, input_names=in_names,
                          output_names=out_names, dynamic_axes=dynamic_axes or None,
                          opset_version=opset or TORCHSCRIPT_OPSET, do_constant_folding=True)
    _relax_output_shapes(path)


def _relax_output_shapes(path: Path) -> None:
    """Drop the traced output shapes the TorchScript exporter could not tie to a dynamic input dim.

    A traced size (batch 2 in the example) left in an output's declared shape makes ONNX Runtime warn on
    every call at another batch size; the runtime computes output shapes itself.
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    onnx.save_model(proto, str(path))


def _check_interface(path: Path, in_names: list[str], out_names: list[str]) -> None:
    """The file's inputs and outputs must be exactly the spec's, in order (an exporter may prune one)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != in_names:
        raise CompileError(f"the exported graph takes inputs {got_in}, expected {in_names} (an input the model "
                           "does not use is dropped by the exporter)", backend="onnxruntime")
    if got_out != out_names:
        raise CompileError(f"the exported graph has outputs {got_out}, expected {out_names}", backend="onnxruntime")


def save_model_proto(proto, path: Path) -> None:
    """Write an ONNX model, with its weights in ``model.onnx.data`` when it is too big for one protobuf."""
    import onnx

    big = sum(len(t.raw_data) for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=path.name + ".data" if big else None)
