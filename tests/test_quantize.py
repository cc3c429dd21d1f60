"""Reduced precision on the PyTorch backends: int8 dynamic/static (torch.ao), fp16/bf16 weight casts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import motorpool
from motorpool import InputError, UnsupportedError
from motorpool.plugin.torch_precision import calibration_batches, cast_model
from motorpool.testing.zoo import get

from _digits import held_out, trained

TORCH_BACKENDS = ["eager", "torchscript"]


def _module_types(engine) -> set[str]:
    return {f"{type(m).__module__}.{type(m).__name__}" for m in engine.runner.module.modules()}


@pytest.mark.parametrize("backend_name", TORCH_BACKENDS)
@pytest.mark.parametrize("case", ["mlp", "lstm"])
def test_int8_dynamic_is_verified_and_really_quantized(backend_name, case):
    model, ex = get(case).build(4)
    engine = motorpool.compile(model, ex, backend=backend_name, precision="int8")
    assert engine.precision == "int8"
    assert engine.report.verification["passed"]
    assert engine.report.info["int8"] == "dynamic"
    assert engine.report.info["quantized_layers"] >= 1
    if backend_name == "eager":
        assert any(t.startswith("torch.ao.nn.quantized.dynamic.") for t in _module_types(engine))
    else:
        assert "quantized::" in str(engine.runner.module.graph)  # int8 kernels in the frozen graph
    out = engine(*get(case).inputs(3))
    flat = out if isinstance(out, torch.Tensor) else out[0]
    assert flat.dtype == torch.float32 and torch.isfinite(flat).all()


@pytest.fixture(scope="module")
def cnn_case():
    """The digits CNN (Conv + BatchNorm + ReLU, 1x8x8), trained; calibrated on real images."""
    x, _ = held_out("cnn")
    return trained("cnn"), (x[:4],), [x[i:i + 32] for i in range(0, 96, 32)]


@pytest.mark.parametrize("backend_name", TORCH_BACKENDS)
def test_int8_static_with_calibration_fuses_and_verifies(backend_name, cnn_case):
    model, ex, calibration = cnn_case
    engine = motorpool.compile(model, ex, backend=backend_name, precision="int8", calibration=calibration)
    info = engine.report.info
    assert info["int8"] == "static" and info["calibration_batches"] == 3
    assert engine.report.verification["passed"] and engine.report.verification["min_cosine"] >= 0.98
    if backend_name == "eager":
        types = _module_types(engine)
        # Conv + BatchNorm + ReLU fused, then quantized
        assert "torch.ao.nn.intrinsic.quantized.modules.conv_relu.ConvReLU2d" in types
        assert not any(t.endswith("BatchNorm2d") for t in types)
    else:
        assert "quantized::conv2d" in str(engine.runner.module.graph)


def test_static_int8_engine_saves_and_loads(tmp_path, cnn_case):
    model, ex, calibration = cnn_case
    engine = motorpool.compile(model, ex, backend="torchscript", precision="int8", calibration=calibration)
    engine.save(tmp_path / "e")
    loaded = motorpool.load(tmp_path / "e", trust_code=True)  # TorchScript is code (SECURITY.md)
    x = held_out("cnn")[0][100:102]
    assert loaded.precision == "int8"
    torch.testing.assert_close(loaded(x), engine(x))


def test_dynamic_int8_without_quantizable_layers_says_use_calibration():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(UnsupportedError, match="calibration") as info:
        motorpool.compile(model, torch.randn(2, 3, 8, 8), backend="eager", precision="int8")
    assert info.value.backend == "eager"


@pytest.mark.parametrize("backend_name", TORCH_BACKENDS)
@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precisions_cast_weights_and_keep_fp32_io(backend_name, precision, dtype):
    model, ex = get("cnn").build(4)
    engine = motorpool.compile(model, ex, backend=backend_name, precision=precision)
    assert engine.precision == precision and engine.report.verification["passed"]
    out = engine(get("cnn").inputs(2)[0])
    assert out.dtype == torch.float32  # callers see the model's dtypes
    assert engine.input_spec.inputs[0].dtype == "float32"
    if backend_name == "eager":
        weights = [p for p in engine.runner.module.parameters()]
        assert weights and all(p.dtype == dtype for p in weights)
    # the caller's model is untouched
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("backend_name", TORCH_BACKENDS)
def test_half_precision_engines_save_and_load(backend_name, tmp_path):
    model, ex = get("two_inputs").build(2)
    engine = motorpool.compile(model, ex, backend=backend_name, precision="bf16")
    engine.save(tmp_path / "e")
    loaded = motorpool.load(tmp_path / "e", trust_code=True)  # TorchScript is code (SECURITY.md)
    x = get("two_inputs").inputs(3)
    assert loaded.precision == "bf16"
    torch.testing.assert_close(loaded(*x), engine(*x))


def test_cast_model_keeps_integer_inputs():
    model, (ids, mask) = get("encoder").build(2)
    half = cast_model(model, "bf16")
    out = half(ids, mask)
    assert out.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out.flatten(), model(ids, mask).flatten(), dim=0) > 0.99


def test_calibration_is_checked():
    with pytest.raises(InputError, match="empty"):
        calibration_batches([], 1)
    with pytest.raises(InputError, match="item 1: 2 inputs, the model takes 1"):
        calibration_batches([torch.randn(2, 3), (torch.randn(2, 3), torch.randn(2, 3))], 1)
    with pytest.raises(InputError, match="single array"):
        calibration_batches(torch.randn(4, 3), 1)
    model, ex = get("mlp").build(2)
    with pytest.raises(InputError, match="calibration"):
        motorpool.compile(model, ex, backend="eager", precision="int8", options={"int8": "static"})
    with pytest.raises(InputError, match="calibration item 0"):  # checked against the spec: 31 != 32 features
        motorpool.compile(model, ex, backend="eager", precision="int8", calibration=[torch.randn(2, 31)])


def test_every_undeclared_cell_is_an_explicit_unsupported_reason():
    """Backend x precision: a precision a backend does not declare is refused by name, never attempted."""
    model, ex = get("mlp").build(2)
    refused = 0
    for info in motorpool.list_backends():
        backend = motorpool.get_registry().get(info.name)
        for precision in motorpool.PRECISIONS:
            if precision in backend.capabilities.precisions:
                continue
            reason = backend.supports(precision=precision)
            assert reason and precision in reason
            if info.available and refused < 2:
                with pytest.raises(UnsupportedError, match=precision):
                    motorpool.compile(model, ex, backend=info.name, precision=precision)
                refused += 1
    for name in TORCH_BACKENDS + ["torch_compile"]:
        assert set(motorpool.get_registry().get(name).capabilities.precisions) == set(motorpool.PRECISIONS)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_int8_keeps_accuracy_on_real_digits(kind):
    """Trained on scikit-learn's digits: int8 must stay within 2 points of the fp32 model's accuracy."""
    model = trained(kind)
    x, y = held_out(kind)
    calibration = None if kind == "mlp" else [x[i:i + 64] for i in range(0, 256, 64)]
    gate = motorpool.Gate("accuracy", [x[:200], x[200:]], max_drop=0.02, labels=[y[:200], y[200:]])
    engine = motorpool.compile(model, x[:8], backend="torchscript", precision="int8", calibration=calibration,
                               gate=gate)
    g = engine.report.gate
    assert g["passed"] and g["baseline"] > 0.9  # a real classifier, measured on held-out digits
    assert g["drop"] <= 0.02
    assert engine.report.info["int8"] == ("dynamic" if kind == "mlp" else "static")
