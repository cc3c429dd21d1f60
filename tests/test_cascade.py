"""motorpool's confidence cascade on real data (scikit-learn digits): a small MLP in front of a bigger one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

import motorpool
from motorpool.serving.cascade import CONFIDENCES, Cascade, CascadeCalibration

import _digits
from _teachers import trained_fast, trained_teacher


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return trained_fast(), trained_teacher()
    finally:
        torch.set_num_threads(threads)


def _held_out():
    x, y = _digits.held_out("mlp")
    return x, y


class Recording(nn.Module):
    """Passes through to ``inner`` and records how many rows each call saw."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(int(x.shape[0]))
        return self.inner(x)


def _expected(fast, accurate, cascade, x, threshold):
    with torch.no_grad():
        f, a = fast(x), accurate(x)
    conf = CONFIDENCES[cascade.confidence_name](f)
    route = conf < threshold
    return torch.where(route[:, None], a, f), route


@pytest.mark.parametrize("measure", sorted(CONFIDENCES))
def test_routing_is_per_sample_and_keeps_the_order(models, measure):
    fast, accurate = models
    x, _ = _held_out()
    recorder = Recording(accurate)
    cascade = Cascade(fast, recorder, measure, example_inputs=x[:2])
    conf = cascade.confidences(x)
    assert conf.shape == (len(x),) and bool(((conf >= 0) & (conf <= 1)).all())
    threshold = float(conf.quantile(0.3))
    cascade.threshold = threshold
    want, route = _expected(fast, accurate, cascade, x, threshold)
    assert 0 < int(route.sum()) < len(x)

    got = cascade(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert recorder.rows == [int(route.sum())]  # the accurate model saw only the routed samples, once
    assert cascade.counters() == {"calls": 1, "samples": len(x), "routed": int(route.sum()),
                                  "fraction_routed": int(route.sum()) / len(x)}
    # another order gives the same rows in that order
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cascade(x[perm]), want[perm], rtol=1e-5, atol=1e-6)


def test_threshold_zero_routes_nothing_and_one_routes_everything(models):
    fast, accurate = models
    x, _ = _held_out()
    recorder = Recording(accurate)
    cascade = Cascade(fast, recorder, threshold=0.0)
    with torch.no_grad():
        f, a = fast(x), accurate(x)
    assert torch.equal(cascade(x), f) and cascade.routed == 0 and recorder.rows == []
    cascade.threshold = 1.0
    assert torch.equal(cascade(x), a) and recorder.rows == [len(x)]
    assert cascade.routed == len(x) and cascade.samples == 2 * len(x) and cascade.fraction_routed == 0.5
    cascade.reset_counters()
    assert cascade.counters()["calls"] == 0


def test_outputs_keep_the_models_structure_and_numpy_in_gives_numpy_out(models):
    class Dict(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            logits = self.inner(x)
            return {"features": logits.relu() + 1, "logits": logits}

    fast, accurate = Dict(models[0]), Dict(models[1])
    x, _ = _held_out()
    cascade = Cascade(fast, accurate, "margin", threshold=0.6, output="logits")
    with torch.no_grad():
        f, a = fast(x), accurate(x)
    route = CONFIDENCES["margin"](f["logits"]) < 0.6
    assert 0 < int(route.sum()) < len(x)
    out = cascade(x.numpy())
    assert isinstance(out, dict) and list(out) == ["features", "logits"]
    for key in out:
        assert isinstance(out[key], np.ndarray)
        np.testing.assert_allclose(out[key], torch.where(route[:, None], a[key], f[key]).numpy(), rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(motorpool.InputError, match=r"output='scores'.*\['features', 'logits'\]"):
        Cascade(fast, accurate, output="scores")(x)


def test_calibration_meets_its_target_on_a_held_out_split(models):
    fast, accurate = models
    x, y = _held_out()
    calib, test = slice(0, 200), slice(200, None)
    with torch.no_grad():
        reference = accurate(x).argmax(-1)
    cascade = Cascade(fast, accurate, "max_softmax")
    figures = cascade.calibrate(x[calib], target_agreement=0.99)
    assert isinstance(figures, CascadeCalibration) and cascade.threshold == figures.threshold
    assert figures.fast_alone < 0.99 <= figures.achieved and figures.accurate_alone == 1.0
    assert 0 < figures.fraction_routed < 0.5  # it saves most of the accurate model's work
    out = cascade(x[calib])  # the cascade does what calibration said, on the calibration data
    assert float((out.argmax(-1) == reference[calib]).double().mean()) == pytest.approx(figures.achieved)
    assert cascade.fraction_routed == pytest.approx(figures.fraction_routed)
    # the largest saving: routing one distinct confidence less misses the target
    conf = cascade.confidences(x[calib])
    below = conf[conf < figures.threshold]
    if below.numel():
        cascade.threshold = float(below.max())
        assert float((cascade(x[calib]).argmax(-1) == reference[calib]).double().mean()) < 0.99

    # with a confidence level the threshold holds on samples it never saw
    bounded = Cascade(fast, accurate, "max_softmax")
    held = bounded.calibrate(x[calib], target_agreement=0.99, confidence_level=0.9)
    assert held.threshold >= figures.threshold and held.fraction_routed < 0.5
    agreement = float((bounded(x[test]).argmax(-1) == reference[test]).double().mean())
    assert agreement >= 0.99, (agreement, held)


def test_calibration_against_labels(models):
    fast, accurate = models
    x, y = _held_out()
    cascade = Cascade(fast, accurate, "entropy")
    figures = cascade.calibrate(x, labels=y, target_accuracy=0.965)
    assert figures.target == "accuracy" and figures.cascade_accuracy == pytest.approx(figures.achieved)
    assert figures.fast_accuracy < 0.965 <= float((cascade(x).argmax(-1) == y).double().mean())
    assert figures.accurate_accuracy is not None and figures.fraction_routed < 1.0
    with pytest.raises(motorpool.InputError, match=r"target_accuracy=1 cannot be met.*best the cascade reaches"):
        cascade.calibrate(x, labels=y, target_accuracy=1.0)
    with pytest.raises(motorpool.InputError, match=r"needs labels"):
        cascade.calibrate(x, target_accuracy=0.9)
    with pytest.raises(motorpool.InputError, match=r"not both"):
        cascade.calibrate(x, labels=y, target_accuracy=0.9, target_agreement=0.9)
    with pytest.raises(motorpool.InputError, match=r"expected 397 integer class indices"):
        cascade.calibrate(x, labels=y[:10], target_accuracy=0.9)


def test_behind_the_dynamic_batcher_with_concurrent_submits(models):
    fast, accurate = models
    x, _ = _held_out()
    engine = motorpool.compile(fast, (x[:4],), backend="eager")
    cascade = Cascade(engine, accurate, "max_softmax")
    assert cascade.input_spec is engine.input_spec
    conf = cascade.confidences(x).sort().values
    gaps = conf[1:] - conf[:-1]
    middle = len(conf) // 4 + int(torch.argmax(gaps[len(conf) // 4:len(conf) // 2]))  # clear of any sample
    cascade.threshold = float((conf[middle] + conf[middle + 1]) / 2)
    want, route = _expected(fast, accurate, cascade, x, cascade.threshold)
    assert 0 < int(route.sum()) < len(x)

    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    with motorpool.DynamicBatcher(cascade, max_batch_size=16, max_delay_ms=2.0) as batcher:
        def client(worker: int):
            try:
                for start in range(worker * 3, len(x), 8 * 3):
                    results[start] = batcher.submit(x[start:start + 3]).result(timeout=30)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = batcher.stats()
    assert not errors, errors
    got = torch.cat([results[k] for k in sorted(results)])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert cascade.samples == len(x) and cascade.routed == int(route.sum())
    assert cascade.calls < len(results)  # requests really were batched together
    assert stats is not None


def test_compiled_engines_on_both_ends(models):
    pytest.importorskip("onnxruntime", reason="needs the onnxruntime extra: pip install 'motorpool[onnxruntime]'")
    fast, accurate = models
    x, _ = _held_out()
    cascade = Cascade(motorpool.compile(fast, (x[:4],), backend="onnxruntime"),
                      motorpool.compile(accurate, (x[:4],), backend="onnxruntime"), "margin", threshold=0.5)
    want, route = _expected(fast, accurate, cascade, x, 0.5)
    out = cascade(x.numpy())
    assert isinstance(out, np.ndarray)
    assert float((out.argmax(-1) == want.argmax(-1).numpy()).mean()) >= 0.99  # fp32 engines: near-identical
    assert cascade.routed == pytest.approx(int(route.sum()), abs=2)
    with pytest.raises(motorpool.InputError, match=r"expected shape \[.batch., 64\], got \[3, 63\]"):
        cascade(torch.randn(3, 63))


def test_bad_arguments_get_clear_errors(models):
    fast, accurate = models
    x, _ = _held_out()
    with pytest.raises(motorpool.InputError, match=r"Choose one of: max_softmax, margin, entropy"):
        Cascade(fast, accurate, "softmax")
    with pytest.raises(motorpool.InputError, match=r"threshold: expected a number in \[0, 1\].*1.5"):
        Cascade(fast, accurate, threshold=1.5)
    with pytest.raises(motorpool.InputError, match=r"accurate: expected an engine or nn.Module"):
        Cascade(fast, "big-model")
    with pytest.raises(AttributeError, match=r"example_inputs"):
        Cascade(fast, accurate).input_spec
    with pytest.raises(motorpool.InputError, match=r"expected values in \[0, 1\]"):
        Cascade(fast, accurate, lambda logits: logits.max(-1).values * 100)(x)
    with pytest.raises(motorpool.InputError, match=r"expected 397 numbers"):
        Cascade(fast, accurate, lambda logits: logits.max())(x)
    nan = Cascade(fast, accurate, lambda logits: torch.full((logits.shape[0],), float("nan")))
    with pytest.raises(motorpool.InputError, match=r"\[0, 1\]"):
        nan(x)
    with pytest.raises(motorpool.InputError, match=r"input 'input0'.*expected shape \['batch', 64\], got \[3, 63\]"):
        Cascade(fast, accurate, example_inputs=x[:2])(torch.randn(3, 63))
    with pytest.raises(motorpool.InputError, match=r"target_agreement: expected a fraction in \(0, 1\]"):
        Cascade(fast, accurate).calibrate(x, target_agreement=99)
    # a callable confidence in [0, 1] works, and names itself
    custom = Cascade(fast, accurate, lambda logits: torch.sigmoid(logits.max(-1).values - 5), threshold=0.5)
    assert custom(x).shape == (len(x), 10) and custom.confidence_name == "<lambda>"
