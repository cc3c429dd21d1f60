"""ONNX Runtime backend specifics: providers, no silent CPU fallback, exporter fallback, session options,
save/load, reduced precision. The generic behaviour (zoo models, bad input, threads, fresh-process load)
is the shared conformance suite in tests/test_backends.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import motorpool
from motorpool import BackendUnavailable, UnsupportedError
from motorpool.testing.zoo import ZOO

pytestmark = pytest.mark.backend("onnxruntime")

#: the TorchScript exporter takes ~50 ms where the dynamo exporter takes seconds: tests that are not
#: about the exporter use it
FAST = {"exporters": ["torchscript"]}


class DataDependent(torch.nn.Module):
    """Branches on a tensor's value: torch.export (the dynamo exporter) refuses it, tracing records it."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        if bool(x.abs().max() >= 0):  # always true, but only known at run time
            return self.fc(x)
        return -self.fc(x)


def _mlp(batch=2):
    return ZOO["mlp"].build(batch)


@pytest.fixture(scope="module")
def mlp_engine():
    model, ex = _mlp()
    return model, motorpool.compile(model, ex, backend="onnxruntime", cache=False)


def test_cpu_provider_chosen_and_reported(mlp_engine):
    import onnxruntime as ort

    _, engine = mlp_engine
    info = engine.report.info
    assert info["exporter"] == "dynamo"
    assert info["provider"] == "CPUExecutionProvider"
    assert engine.runner.session.get_providers()[0] == "CPUExecutionProvider"
    # ORT_ENABLE_ALL unless told otherwise
    assert info["session"]["graph_optimization_level"] == "all"
    assert engine.runner.session.get_session_options().graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_numpy_in_numpy_out_and_dynamic_batch(mlp_engine):
    model, engine = mlp_engine
    x = torch.randn(5, 32)
    out = engine(x.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (5, 10)
    with torch.inference_mode():
        np.testing.assert_allclose(out, model(x).numpy(), atol=1e-4, rtol=1e-3)


def test_runtime_error_is_wrapped_with_the_input_spec(mlp_engine):
    _, engine = mlp_engine
    # bypass the spec check on purpose, so that the runtime itself fails
    with pytest.raises(RuntimeError, match=r"onnxruntime engine failed on inputs \(float64\[2, 32\]\).*spec"):
        engine.run_flat([np.random.randn(2, 32)])


def test_cuda_asked_for_is_never_served_by_the_cpu():
    model, ex = _mlp()
    with pytest.raises(BackendUnavailable, match="cuda"):
        motorpool.compile(model, ex, backend="onnxruntime", device="cuda", cache=False, options=FAST)
    from motorpool.backends.onnxruntime import choose_providers

    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider.*does not fall back"):
        choose_providers("cuda:0", ["CPUExecutionProvider"])
    assert choose_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == \
        [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]


def test_session_that_lands_on_another_provider_is_an_error(monkeypatch, tmp_path):
    """onnxruntime-gpu quietly runs on the CPU when CUDA's libraries are missing; motorpool refuses."""
    import onnxruntime as ort

    from motorpool.backends import onnxruntime as backend

    class CPUOnlySession:
        def __init__(self, *args, **kwargs):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", CPUOnlySession)
    with pytest.raises(UnsupportedError, match="asked to run on 'cuda:0' with CUDAExecutionProvider.*CPUExecution"):
        backend.make_session(tmp_path / "model.onnx", backend.session_config({}),
                             [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], "cuda:0")


def test_exporter_falls_back_to_torchscript_with_both_reasons():
    model = DataDependent().eval()
    engine = motorpool.compile(model, (torch.randn(2, 8),), backend="onnxruntime", cache=False)
    info = engine.report.info
    assert info["exporter"] == "torchscript"
    first, second = info["export_attempts"]
    assert first["exporter"] == "dynamo" and not first["ok"] and first["error"]
    assert second == {"exporter": "torchscript", "ok": True, "error": None}
    assert engine.report.verification["passed"]
    # the TorchScript exporter restores the mode of what it exported: the user's model stays in eval mode
    assert not any(m.training for m in model.modules())


def test_every_exporter_failing_names_each_reason(monkeypatch):
    from motorpool.backends.onnxruntime import export as _onnx_export

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(_onnx_export, "_export_torchscript", broken)
    with pytest.raises(motorpool.CompileError, match=r"dynamo: .*; torchscript: RuntimeError: exporter exploded"):
        motorpool.compile(DataDependent().eval(), (torch.randn(2, 8),), backend="onnxruntime", cache=False)


def test_session_options_are_applied_and_checked():
    model, ex = _mlp()
    engine = motorpool.compile(model, ex, backend="onnxruntime", cache=False,
                               options={**FAST, "graph_optimization_level": "basic", "intra_op_num_threads": 1})
    so = engine.runner.session.get_session_options()
    assert so.intra_op_num_threads == 1
    import onnxruntime as ort

    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(motorpool.OptionError, match="option 'graph_optimization_level': 'max' is not one of"):
        motorpool.compile(model, ex, backend="onnxruntime", cache=False,
                          options={**FAST, "graph_optimization_level": "max"})


def test_save_keeps_the_onnx_file_and_session_options(mlp_engine, tmp_path):
    import onnx

    model, engine = mlp_engine
    path = engine.save(tmp_path / "e")
    onnx_file = path / "artifact" / "model.onnx"
    proto = onnx.load(str(onnx_file))
    assert [i.name for i in proto.graph.input] == engine.input_spec.names
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = json.loads((path / "manifest.json").read_text())["backend_metadata"]
    assert meta["session"]["graph_optimization_level"] == "all" and meta["exporter"] == "dynamo"
    loaded = motorpool.load(path)
    assert loaded.report.info["provider"] == "CPUExecutionProvider"
    x = torch.randn(3, 32)
    torch.testing.assert_close(loaded(x), engine(x))


def test_fp16_keeps_fp32_inputs_and_outputs():
    import onnx

    model, ex = _mlp()
    engine = motorpool.compile(model, ex, backend="onnxruntime", precision="fp16", cache=False, options=FAST)
    assert engine.precision == "fp16" and engine.report.verification["passed"]
    out = engine(torch.randn(4, 32))
    assert out.dtype == torch.float32
    path = engine.runner._workdir / "model.onnx"
    inits = {t.data_type for t in onnx.load(str(path)).graph.initializer if len(t.dims) == 2}
    assert inits == {onnx.TensorProto.FLOAT16}


def test_int8_dynamic_without_calibration_static_with_it():
    model, ex = _mlp()
    dynamic = motorpool.compile(model, ex, backend="onnxruntime", precision="int8", cache=False, options=FAST)
    assert dynamic.report.info["int8_mode"] == "dynamic" and dynamic.report.info["int8_quantized_nodes"] > 0
    calibration = [(torch.randn(8, 32),) for _ in range(4)]
    static = motorpool.compile(model, ex, backend="onnxruntime", precision="int8", calibration=calibration,
                               cache=False, options=FAST)
    info = static.report.info
    assert info["int8_mode"] == "static" and info["int8_calibration_items"] == 4
    assert static.report.verification["min_cosine"] >= motorpool.TOLERANCES["int8"].min_cosine


def test_int8_dynamic_survives_weights_shared_between_gemms():
    """A freshly built nn.TransformerEncoder has identical layers: the exporter shares their weights, and
    quantize_dynamic used to transpose a shared Gemm weight twice (cosine ~0.6)."""
    model, ex = ZOO["encoder"].build(2)
    engine = motorpool.compile(model, ex, backend="onnxruntime", precision="int8", cache=False, options=FAST)
    assert engine.report.verification["min_cosine"] >= 0.98


def test_not_installed_says_which_extra(monkeypatch):
    import importlib.util

    from motorpool.backends.onnxruntime import OnnxRuntimeBackend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    av = OnnxRuntimeBackend().availability()
    assert av.status.value == "not-installed" and av.fix == 'pip install "motorpool[onnxruntime]"'
