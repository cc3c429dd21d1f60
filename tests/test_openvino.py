"""OpenVINO backend specifics: fp32 really asks for f32 (not the AMX bf16 default), performance hints,
converter fallback, IR save/load with the model cache, one infer request per thread, bf16 and int8.
The generic behaviour is the shared conformance suite in tests/test_backends.py."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

import motorpool
from motorpool import BackendUnavailable, UnsupportedError
from motorpool.testing.zoo import ZOO

pytestmark = pytest.mark.backend("openvino")

#: tracing converts faster than torch.export; tests that are not about the converter use it
FAST = {"converters": ["tracing"]}


class DataDependent(torch.nn.Module):
    """Branches on a tensor's value: torch.export refuses it, tracing records it."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        if bool(x.abs().max() >= 0):
            return self.fc(x)
        return -self.fc(x)


@pytest.fixture(scope="module")
def mlp_engine():
    model, ex = ZOO["mlp"].build(2)
    return model, motorpool.compile(model, ex, backend="openvino", cache=False)


def _hint(engine, prop):
    return str(engine.runner.compiled.get_property(prop)).split(".")[-1]


def test_fp32_asks_for_f32_and_latency(mlp_engine):
    import openvino as ov

    _, engine = mlp_engine
    assert engine.runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    # the check above is a real one on both kinds of CPU the project runs on: OpenVINO's own default is bf16
    # with AMX (Sapphire Rapids) and with avx512_bf16 alone (Zen 4/5), so an fp32 engine must ask for f32
    features = set(motorpool.hardware.detect().cpu.features)
    if features & {"amx_bf16", "avx512_bf16"}:
        assert ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == ov.Type.bf16
    assert _hint(engine, "PERFORMANCE_HINT") == "LATENCY"
    assert engine.report.info["converter"] == "export"
    assert engine.report.info["ov_device"] == "CPU"


def test_bf16_and_throughput_on_request():
    import openvino as ov

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 support in OpenVINO")
    model, ex = ZOO["mlp"].build(2)
    engine = motorpool.compile(model, ex, backend="openvino", precision="bf16", cache=False,
                               options={**FAST, "performance_hint": "throughput"})
    assert engine.runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    assert _hint(engine, "PERFORMANCE_HINT") == "THROUGHPUT"
    assert engine.report.verification["passed"] and engine.report.verification["max_abs_err"] > 0
    with pytest.raises(motorpool.OptionError, match="option 'performance_hint': 'fastest' is not one of"):
        motorpool.compile(model, ex, backend="openvino", cache=False, options={**FAST, "performance_hint": "fastest"})


def test_converter_falls_back_to_tracing_with_both_reasons():
    engine = motorpool.compile(DataDependent().eval(), (torch.randn(2, 8),), backend="openvino", cache=False)
    info = engine.report.info
    assert info["converter"] == "tracing"
    first, second = info["convert_attempts"]
    assert first["converter"] == "export" and not first["ok"] and first["error"]
    assert second == {"converter": "tracing", "ok": True, "error": None}


def test_no_device_it_does_not_see():
    model, ex = ZOO["mlp"].build(2)
    with pytest.raises(BackendUnavailable, match="xpu"):
        motorpool.compile(model, ex, backend="openvino", device="xpu", cache=False)


def test_save_keeps_full_precision_ir_and_load_uses_the_model_cache(mlp_engine, tmp_path):
    import openvino as ov

    model, engine = mlp_engine
    path = engine.save(tmp_path / "e")
    xml, bin_ = path / "artifact" / "model.xml", path / "artifact" / "model.bin"
    assert xml.exists()
    weights = sum(p.numel() for p in model.parameters())
    assert bin_.stat().st_size >= 4 * weights  # fp32 on disk: compress_to_fp16=False
    meta = json.loads((path / "manifest.json").read_text())["backend_metadata"]
    assert meta["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    from motorpool.plugin.contract import CompileOptions
    from motorpool.backends.openvino import OpenVINOBackend

    cache = tmp_path / "ov-cache"

    runner = OpenVINOBackend().load(path / "artifact", meta, CompileOptions(
        device="cpu", precision="fp32", spec=engine.input_spec, extra={"cache_dir": str(cache)}))
    assert any(cache.iterdir()), "the model cache directory stayed empty"
    assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    x = np.random.randn(3, 32).astype(np.float32)
    np.testing.assert_allclose(runner.run([x])[0], engine(x), rtol=1e-5, atol=1e-6)
    again = motorpool.load(path)
    torch.testing.assert_close(again(torch.from_numpy(x)), torch.from_numpy(engine(x)))


def test_each_thread_gets_its_own_infer_request(mlp_engine):
    model, engine = mlp_engine
    runner = engine.runner
    requests, errors = {}, []
    xs = [torch.randn(i + 1, 32) for i in range(6)]

    def work(i):
        try:
            for _ in range(20):
                out = engine(xs[i])
                with torch.inference_mode():
                    torch.testing.assert_close(out, model(xs[i]), rtol=1e-3, atol=1e-4)
            requests[i] = runner._local.request
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({id(r) for r in requests.values()}) == len(xs)


def test_int8_static_with_calibration_weights_only_without():
    model, ex = ZOO["mlp"].build(2)
    calibration = [(torch.randn(8, 32),) for _ in range(4)]
    static = motorpool.compile(model, ex, backend="openvino", precision="int8", calibration=calibration,
                               cache=False, options=FAST)
    assert static.report.info["int8_mode"] == "static" and static.report.info["int8_quantized_nodes"] > 0
    weights = motorpool.compile(model, ex, backend="openvino", precision="int8", cache=False, options=FAST)
    assert weights.report.info["int8_mode"] == "weights"
    with pytest.raises(UnsupportedError, match="needs calibration"):
        motorpool.compile(model, ex, backend="openvino", precision="int8", cache=False,
                          options={**FAST, "int8": "static"})


def test_availability_lists_openvino_devices_and_says_which_extra_when_missing(monkeypatch):
    import importlib.util

    import openvino as ov

    from motorpool.backends.openvino import OpenVINOBackend, from_ov_device

    av = OpenVINOBackend().availability()
    assert av.available and av.devices[0] == "cpu" and av.versions["openvino"]
    assert sorted(av.devices) == sorted(d for d in map(from_ov_device, ov.Core().available_devices) if d)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    av = OpenVINOBackend().availability()
    assert av.status.value == "not-installed" and av.fix == 'pip install "motorpool[openvino]"'
