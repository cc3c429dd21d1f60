"""``precision="auto"`` uses what it is given: without ``calibration=``, static int8 cells calibrate on a held-out
part of the gate's data and the gate scores only the rest; every cell's row carries its figures and, when
refused, why. Real data: a small MLP trained on scikit-learn's digits (tests/_digits.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import _digits
import motorpool
from motorpool import Gate, InputSpec
from motorpool.plugin.registry import safe_availability
from motorpool.selection.precision_search import compile_precision_search
from motorpool.techniques.held_out import HOLD_OUT_EVERY, hold_out

#: the int8 cells that calibrate statically here: ORT quantize_static, NNCF, torch.ao FX
STATIC_INT8 = ("eager", "onnxruntime", "openvino")


def _cells(engine) -> dict:
    return {c.backend: c for c in engine.report.candidates}


@pytest.fixture(scope="module")
def digits():
    model = _digits.trained("mlp")
    x, y = _digits.held_out("mlp")
    return model, x, y


@pytest.fixture(scope="module")
def search(digits):
    """One search over torch, ONNX Runtime and OpenVINO, with an accuracy gate on 397 held-out digits."""
    model, x, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = motorpool.compile(model, x[:8], backend=list(STATIC_INT8), precision="auto",
                                   gate=Gate("accuracy", [x], labels=[y], max_drop=0.05))
    return engine, x, y


def test_static_int8_cells_calibrate_on_a_held_out_quarter_of_the_gates_data(search):
    engine, x, _ = search
    n, held = len(x), len(x) // HOLD_OUT_EVERY
    note = engine.report.info["selection"]["calibration"]
    assert note["source"] == "gate (held out)" and note["unit"] == "samples"
    assert note["samples"] == len(note["indices"]) == held and note["scored_samples"] == n - held
    assert engine.report.info["selection"]["gate"]["samples"] == n - held
    cells = _cells(engine)
    for name in STATIC_INT8:
        cell = cells[f"{name}/int8"]
        assert cell.status in ("verified", "chosen"), cell.reason
        assert cell.figures["calibration"] == {"source": "gate (held out)", "samples": held, "batches": 1}
        assert cell.figures["int8"] == "static"
    # every cell is judged on the same samples, the ones that did not calibrate
    gated = [c.figures["gate"]["samples"] for c in cells.values() if "gate" in c.figures]
    assert len(gated) >= 8 and set(gated) == {n - held}
    assert "calibration" not in cells["onnxruntime/fp32"].figures
    assert f"calibrated on {held} samples" in str(engine.report)


def test_the_gate_scores_exactly_the_samples_not_held_out(search):
    engine, x, y = search
    indices = engine.report.info["selection"]["calibration"]["indices"]
    rest = sorted(set(range(len(x))) - set(indices))
    assert len(rest) == len(x) - len(indices) and engine.report.gate["samples"] == len(rest)
    scored = engine.gate  # the gate the returned engine was judged (and is saved) with
    assert torch.equal(torch.cat([b[0] for b in scored.batches]), x[rest])
    assert torch.equal(torch.cat(scored.labels), y[rest])


def test_a_held_out_int8_cell_is_the_engine_calibrated_on_those_samples(digits):
    model, x, y = digits
    gate = Gate("accuracy", [x], labels=[y], max_drop=0.05)
    searched = compile_precision_search(model, x[:8], backend=["onnxruntime"], gate=gate, precisions=("int8",))
    indices = searched.report.info["selection"]["calibration"]["indices"]
    on_held = motorpool.compile(model, x[:8], backend="onnxruntime", precision="int8", calibration=[x[indices]])
    on_all = motorpool.compile(model, x[:8], backend="onnxruntime", precision="int8", calibration=[x])
    fresh = torch.rand(50, 64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(searched(fresh), on_held(fresh))
    assert not torch.equal(searched(fresh), on_all(fresh))  # the calibration set is what made the difference


def test_a_gate_too_small_to_split_skips_static_int8_cells_with_the_reason(digits):
    model, x, y = digits
    few = HOLD_OUT_EVERY - 1
    engine = motorpool.compile(model, x[:8], backend=["eager", "onnxruntime"], precision="auto",
                               gate=Gate("accuracy", [x[:few]], labels=[y[:few]], max_drop=0.05))
    cells = _cells(engine)
    for label in ("eager/int8", "onnxruntime/int8"):
        assert cells[label].status == "skipped"
        assert "no calibration data" in cells[label].reason and f"{few} samples" in cells[label].reason
        assert "calibration=" in cells[label].reason
    assert cells["onnxruntime/fp32"].figures["gate"]["samples"] == few  # nothing held out: the gate stays whole
    assert "too few" in engine.report.info["selection"]["calibration"]["problem"]


def test_an_explicit_calibration_set_leaves_the_gate_whole(digits):
    model, x, y = digits
    xtr = _digits.digits_data()[0].flatten(1)
    engine = motorpool.compile(model, x[:8], backend=["onnxruntime"], precision="auto", calibration=[xtr[:64]],
                               gate=Gate("accuracy", [x], labels=[y], max_drop=0.05))
    assert engine.report.info["selection"]["calibration"] == {"source": "calibration=", "batches": 1}
    cells = _cells(engine)
    assert cells["onnxruntime/int8"].figures["calibration"] == {"source": "calibration=", "batches": 1}
    assert {c.figures["gate"]["samples"] for c in cells.values() if "gate" in c.figures} == {len(x)}


def test_refused_cells_name_their_reason_and_figure(digits):
    model, x, _ = digits
    # a 1e-5 error budget: fp32 meets it, fp16 and int8 cannot; ONNX Runtime has no bf16; TensorRT is absent
    engine = motorpool.compile(model, x[:8], backend=["onnxruntime", "tensorrt"], precision="auto",
                               gate=Gate("max_abs_error", [x], max_drop=1e-5))
    cells = _cells(engine)
    assert cells["onnxruntime/fp32"].status == "chosen"
    for label in ("onnxruntime/fp16", "onnxruntime/int8"):
        cell = cells[label]
        assert cell.status == "rejected" and "fails the quality gate" in cell.reason and "budget 1e-05" in cell.reason
        assert cell.figures["gate"]["drop"] > cell.figures["gate"]["max_drop"] == 1e-5
        assert cell.figures["verification"]["passed"] and cell.figures["verification"]["min_cosine"] > 0.98
    assert cells["onnxruntime/bf16"].status == "skipped" and "bf16" in cells["onnxruntime/bf16"].reason
    trt = motorpool.get_registry().get("tensorrt")
    if not safe_availability(trt).available:
        assert all(cells[f"tensorrt/{p}"].status == "skipped" and "not available" in cells[f"tensorrt/{p}"].reason
                   for p in ("fp32", "fp16", "bf16", "int8"))


class NearlyCancelling(nn.Module):
    """Two near-identical layers subtracted: int8 rounding of each swamps their small difference, so static
    int8 cannot compute this function however it is calibrated."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.a, self.b = nn.Linear(16, 8), nn.Linear(16, 8)
        w, bias = torch.randn(8, 16, generator=gen), torch.randn(8, generator=gen)
        with torch.no_grad():
            self.a.weight.copy_(w)
            self.b.weight.copy_(w + 1e-3 * torch.randn(8, 16, generator=gen))
            self.a.bias.copy_(bias)
            self.b.bias.copy_(bias)

    def forward(self, x):
        return self.a(x) - self.b(x)


def test_a_cell_that_fails_verification_carries_the_figure():
    gen = torch.Generator().manual_seed(5)
    data = [torch.randn(16, 16, generator=gen) for _ in range(4)]
    engine = compile_precision_search(NearlyCancelling(), data[0], backend=["eager"], precisions=("fp32", "int8"),
                                      gate=Gate("cosine", data, max_drop=0.5))
    cell = _cells(engine)["eager/int8"]
    assert cell.status == "rejected" and "does not match eager PyTorch at int8" in cell.reason
    assert not cell.figures["verification"]["passed"] and cell.figures["verification"]["min_cosine"] < 0.98
    assert cell.figures["calibration"] == {"source": "gate (held out)", "samples": 16, "batches": 4}
    assert engine.precision == "fp32" and engine.report.gate["samples"] == 48


def test_hold_out_spreads_over_batches_and_splits_labels_alike():
    gen = torch.Generator().manual_seed(1)
    data = [torch.rand(5, 3, generator=gen), torch.rand(7, 3, generator=gen)]
    labels = [torch.arange(5), torch.arange(5, 12)]
    held = hold_out(Gate("accuracy", data, 0.1, labels=labels), InputSpec.from_examples((data[0],)))
    assert held.indices == (0, 4, 8) and held.samples == 3
    assert [b[0].shape[0] for b in held.calibration] == [2, 1]
    assert torch.equal(torch.cat([b[0] for b in held.calibration]), torch.cat(data)[[0, 4, 8]])
    assert torch.equal(torch.cat(held.gate.labels), torch.tensor([1, 2, 3, 5, 6, 7, 9, 10, 11]))
    assert torch.equal(torch.cat([b[0] for b in held.gate.batches]), torch.cat(data)[[1, 2, 3, 5, 6, 7, 9, 10, 11]])


def test_hold_out_with_a_fixed_batch_holds_out_whole_batches():
    gen = torch.Generator().manual_seed(2)
    data = [torch.rand(4, 3, generator=gen) for _ in range(5)]
    held = hold_out(Gate("cosine", data, 0.1), InputSpec.from_examples((data[0],), dynamic_batch=False))
    assert held.unit == "batches" and held.indices == (0,)
    assert len(held.calibration) == 1 and torch.equal(held.calibration[0][0], data[0])
    assert len(held.gate.batches) == 4 and all(torch.equal(a[0], b) for a, b in zip(held.gate.batches, data[1:]))
    too_few = hold_out(Gate("cosine", data[:3], 0.1), InputSpec.from_examples((data[0],), dynamic_batch=False))
    assert too_few.calibration is None and too_few.gate.samples == 12 and "3 batches" in too_few.problem
