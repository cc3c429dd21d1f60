"""motorpool.profile: the per-step split of a call, and the backend's top operators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import motorpool
from motorpool.backends.onnxruntime.profiling import summarize_ort_profile
from motorpool.measuring.profiling import STAGES
from motorpool.plugin import OperatorStat
from motorpool.testing import zoo


@pytest.fixture(scope="module")
def cnn():
    return zoo.get("cnn").build(batch=2)


def test_stages_and_torch_profiler_operators(cnn):
    model, x = cnn
    engine = motorpool.compile(model, x, backend="torchscript", cache=False)
    result = motorpool.profile(engine, x, calls=10, top=5, operator_runs=2)
    assert list(result.stages) == list(STAGES)
    assert all(v["median_ms"] >= 0 and v["mean_ms"] >= 0 for v in result.stages.values())
    assert result.stages["backend"]["median_ms"] > 0
    assert sum(v["share"] for v in result.stages.values()) == pytest.approx(1.0)
    assert result.batch == 2 and result.calls == 10
    assert result.operators and len(result.operators) <= 5
    assert result.operators_note == "torch.profiler"
    assert any("conv" in o.name for o in result.operators), [o.name for o in result.operators]
    selfs = [o.self_ms for o in result.operators]
    assert selfs == sorted(selfs, reverse=True) and all(o.calls >= 1 for o in result.operators)
    text = str(result)
    assert "input conversion" in text and "top operators" in text
    assert result.to_dict()["overhead_ms"] == pytest.approx(result.overhead_ms)


def test_numpy_inputs_and_a_runner_without_a_profiler(cnn):
    model, x = cnn

    class Plain(motorpool.Runner):
        def __init__(self):
            self.info = {}

        def run(self, inputs):
            return [model(*inputs)]

        def save(self, directory):
            raise motorpool.UnsupportedError("no")

    engine = motorpool.compile(model, x, backend="eager", cache=False)
    engine._runner = Plain()
    result = motorpool.profile(engine, tuple(t.numpy() for t in x), calls=5)
    assert result.operators is None and "no operator profiler" in result.operators_note
    assert result.stages["convert_in"]["median_ms"] >= 0


def test_bad_inputs_are_an_input_error(cnn):
    model, x = cnn
    engine = motorpool.compile(model, x, backend="eager", cache=False)
    with pytest.raises(motorpool.InputError):
        motorpool.profile(engine, (torch.randn(2, 4, 32, 32),), calls=1)
    with pytest.raises(ValueError):
        motorpool.profile(engine, x, calls=0)


@pytest.mark.backend("onnxruntime")
def test_ort_profile_summary(tmp_path):
    import onnxruntime as ort
    model, x = zoo.get("mlp").build(batch=2)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, x, str(path), input_names=["x"], dynamo=False)
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, {"x": np.random.randn(2, 32).astype(np.float32)})
    stats = summarize_ort_profile(sess.end_profiling(), top=3)
    assert 1 <= len(stats) <= 3 and all(isinstance(s, OperatorStat) for s in stats)
    assert all(s.calls == 3 for s in stats) and stats[0].total_ms >= stats[-1].total_ms
    assert any(s.kind in ("Gemm", "MatMul") for s in stats), stats


@pytest.mark.parametrize("runtime", [pytest.param("onnxruntime", marks=pytest.mark.backend("onnxruntime")),
                                     pytest.param("openvino", marks=pytest.mark.backend("openvino"))])
def test_runtime_profilers_list_nodes(runtime):
    model, x = zoo.get("tuple_out").build(batch=3)
    engine = motorpool.compile(model, x, backend=runtime, cache=False)
    result = motorpool.profile(engine, x, calls=3, top=3, operator_runs=2)
    assert result.operators, result.operators_note
    assert result.operators_note == engine.runner.profiler_name
    assert all(o.calls == 2 and o.total_ms >= 0 for o in result.operators)
    assert any(o.kind for o in result.operators)
