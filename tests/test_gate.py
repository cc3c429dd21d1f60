"""Quality gates: built-in metrics, refusing an engine over budget with the figure, auto/list skipping it,
the precision search, and re-checking a saved gate on load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import motorpool
from motorpool import ArtifactError, CompileError, Gate, GateError, InputError, Metric
from motorpool.techniques.gate import accuracy, cosine, max_abs_error, top1_agreement
from motorpool.testing.zoo import get


def test_builtin_metrics_compute_what_they_say():
    ref = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 5.0], [2.0, 3.0, 0.0]])
    out = torch.tensor([[2.0, 1.0, 0.0], [3.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 3.5, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert top1_agreement(out, ref) == 0.75  # row 1 flips
    assert accuracy(out, ref, labels) == 0.5  # rows 0 and 3 are right
    assert max_abs_error(out, ref) == 3.0
    assert cosine(ref, ref) == pytest.approx(1.0)
    assert cosine(-ref, ref) == pytest.approx(-1.0)


def test_gate_drop_is_baseline_minus_score_and_nan_never_passes():
    model = torch.nn.Linear(4, 3).eval()
    data = [torch.randn(16, 4), torch.randn(8, 4)]
    gate = Gate("cosine", data, max_drop=1e-6)
    assert gate.samples == 24
    same = gate.evaluate(model, model)
    assert same.passed and same.drop == pytest.approx(0.0, abs=1e-12) and same.baseline == 1.0

    def broken(x):
        y = model(x).clone()
        y[0, 0] = float("nan")
        return y
    bad = gate.evaluate(broken, model)
    assert not bad.passed and "NaN" in bad.problem and math.isinf(bad.drop)

    labels = [torch.randint(0, 3, (16,)), torch.randint(0, 3, (8,))]
    acc = Gate("accuracy", data, max_drop=0.0, labels=labels).evaluate(model, model)
    assert acc.baseline == acc.score and acc.drop == 0.0  # the model's own accuracy is the baseline


def test_gate_arguments_are_checked():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="top1_agreement"):
        Gate("nope", x, 0.1)
    with pytest.raises(ValueError, match="max_drop"):
        Gate("cosine", x, -0.1)
    with pytest.raises(InputError, match="labels"):
        Gate("accuracy", x, 0.1)
    with pytest.raises(InputError, match="2 label batches for 1 data batches"):
        Gate("accuracy", [x], 0.1, labels=[torch.zeros(4), torch.zeros(4)])
    with pytest.raises(InputError, match="empty"):
        Gate("cosine", [], 0.1)


@pytest.fixture(scope="module")
def mlp():
    model, ex = get("mlp").build(4)
    gen = torch.Generator().manual_seed(11)
    data = [torch.randn(64, 32, generator=gen) for _ in range(2)]
    return model, ex, data


def test_gate_refuses_an_engine_over_budget_with_the_figure(mlp):
    model, ex, data = mlp
    gate = Gate("max_abs_error", data, max_drop=1e-7)
    with pytest.raises(GateError) as info:
        motorpool.compile(model, ex, backend="torchscript", precision="int8", gate=gate)
    figures = info.value.figures["gate"]
    assert figures["drop"] > 1e-7 and not figures["passed"]
    assert f"{figures['drop']:.6g}" in str(info.value) and "budget 1e-07" in str(info.value)
    assert isinstance(info.value, motorpool.VerificationError)


def test_gate_within_budget_is_in_the_report(mlp):
    model, ex, data = mlp
    gate = Gate("cosine", data, max_drop=0.01)
    engine = motorpool.compile(model, ex, backend="eager", precision="int8", gate=gate)
    g = engine.report.gate
    assert g["passed"] and g["metric"] == "cosine" and 0 <= g["drop"] <= 0.01 and g["samples"] == 128
    assert "gate cosine" in str(engine.report)


def test_gate_under_a_list_skips_each_candidate_with_its_reason(mlp):
    model, ex, data = mlp
    gate = Gate("max_abs_error", data, max_drop=1e-7)
    with pytest.raises(CompileError) as info:
        motorpool.compile(model, ex, backend=["torchscript", "eager"], precision="bf16", gate=gate)
    assert set(info.value.reasons) == {"torchscript", "eager"}
    assert all("fails the quality gate" in r for r in info.value.reasons.values())


def test_precision_auto_returns_the_fastest_cell_that_meets_the_gate(mlp):
    model, ex, data = mlp
    # fp32 meets a 1e-5 error budget; bf16 and int8 cannot: they must be rejected with the gate's figure
    gate = Gate("max_abs_error", data, max_drop=1e-5)
    engine = motorpool.compile(model, ex, backend=["eager", "torchscript"], precision="auto", gate=gate)
    assert engine.precision == "fp32"
    cells = {c.backend: c for c in engine.report.candidates}
    assert {"eager/fp32", "eager/int8", "torchscript/bf16", "torchscript/fp16"} <= set(cells)
    for label in ("eager/int8", "torchscript/bf16", "eager/bf16"):
        assert cells[label].status == "rejected" and "quality gate" in cells[label].reason
        assert cells[label].figures["gate"]["drop"] > 1e-5
    timed = [c for c in cells.values() if c.status in ("chosen", "verified")]
    assert len(timed) >= 2 and all(c.figures["p50_ms"] > 0 for c in timed)
    assert [c.status for c in cells.values()].count("chosen") == 1
    with pytest.raises(ValueError, match="needs gate"):
        motorpool.compile(model, ex, backend="eager", precision="auto")


def test_saved_gate_is_rechecked_on_load(mlp, tmp_path):
    model, ex, data = mlp
    gate = Gate("top1_agreement", data, max_drop=0.2)
    engine = motorpool.compile(model, ex, backend="torchscript", precision="int8", gate=gate)
    engine.save(tmp_path / "e")
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["gate"]["metric"] == "top1_agreement" and manifest["gate"]["stored"]
    assert manifest["gate"]["result"]["passed"]
    stored = np.load(tmp_path / "e" / "gate" / "b0_in0.npy", allow_pickle=False)
    np.testing.assert_array_equal(stored, data[0].numpy())

    loaded = motorpool.load(tmp_path / "e", verify=True, trust_code=True)
    assert loaded.report.gate["rechecked_on_load"] and loaded.report.gate["passed"]
    assert loaded.report.gate["score"] == pytest.approx(engine.report.gate["score"])

    # a tampered reference is caught by its checksum before anything runs
    ref = tmp_path / "e" / "gate" / "reference.npy"
    np.save(ref, np.load(ref) + 1.0)
    with pytest.raises(ArtifactError, match="reference.npy"):
        motorpool.load(tmp_path / "e", verify=True, trust_code=True)


def test_custom_metric_gate_must_be_passed_again_on_load(mlp, tmp_path):
    model, ex, data = mlp

    def mean_error(outputs, reference):
        return -float((outputs - reference).abs().mean())
    gate = Gate(mean_error, data, max_drop=0.1)
    engine = motorpool.compile(model, ex, backend="torchscript", precision="int8", gate=gate)
    assert engine.report.gate["metric"] == "mean_error" and engine.report.gate["baseline"] == 0.0
    engine.save(tmp_path / "e")
    with pytest.raises(ArtifactError, match="pass gate="):
        motorpool.load(tmp_path / "e", verify=True, trust_code=True)
    loaded = motorpool.load(tmp_path / "e", trust_code=True, gate=Gate(mean_error, data, max_drop=0.1))
    assert loaded.report.gate["passed"]
    tight = Gate(Metric("mean_error", mean_error), data, max_drop=0.0)
    with pytest.raises(GateError):
        motorpool.load(tmp_path / "e", trust_code=True, gate=tight)
