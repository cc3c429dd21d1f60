"""Behaviour particular to the PyTorch-native backends."""

import pytest
import torch

import motorpool
from motorpool.testing import zoo


class ShapeBranch(torch.nn.Module):
    """Python-level shape logic: tracing warns it cannot check the trace, yet the result is right."""

    def forward(self, x):
        n = int(x.shape[-1])  # a TracerWarning: converting a tensor to a Python int
        return x * n + torch.arange(n, dtype=x.dtype)


class BakedBatch(torch.nn.Module):
    """The batch size leaks into a constant: a trace at batch 4 is wrong at any other batch size."""

    def forward(self, x):
        return x + torch.arange(int(x.shape[0]), dtype=x.dtype)[:, None]


def test_torchscript_compiles_when_tracer_warns_but_numerics_verify():
    engine = motorpool.compile(ShapeBranch(), torch.randn(4, 6), backend="torchscript")
    assert engine.report.info["tracer_warnings"]
    assert engine.report.verification["passed"]
    x = torch.randn(9, 6)
    torch.testing.assert_close(engine(x), ShapeBranch()(x))


def test_torchscript_trace_that_bakes_in_the_batch_is_refused():
    with pytest.raises(motorpool.VerificationError, match="batch=1"):
        motorpool.compile(BakedBatch(), torch.randn(4, 6), backend="torchscript")
    # told the batch is static, the same trace is right
    engine = motorpool.compile(BakedBatch(), torch.randn(4, 6), backend="torchscript", dynamic_batch=False)
    with pytest.raises(motorpool.InputError, match=r"expected shape \[4, 6\]"):
        engine(torch.randn(3, 6))


def test_torchscript_is_frozen():
    model, x = zoo.get("cnn").build(batch=2)
    engine = motorpool.compile(model, x, backend="torchscript")
    assert engine.report.info["frozen"] is True


def test_torch_compile_does_not_recompile_per_batch_size():
    from torch._dynamo.utils import counters

    model, x = zoo.get("mlp").build(batch=4)
    engine = motorpool.compile(model, x, backend="torch_compile")
    before = sum(counters["stats"].values()), dict(counters["recompiles"])
    for b in (2, 5, 7, 13, 1, 64):
        xb = torch.randn(b, 32)
        torch.testing.assert_close(engine(xb), model(xb), rtol=1e-4, atol=1e-5)
    after = sum(counters["stats"].values()), dict(counters["recompiles"])
    assert before[1] == after[1], f"recompiled: {after[1]}"


class OnlyBatchFour(torch.nn.Module):
    def forward(self, x):
        return x.reshape(4, -1).sum(dim=1)


def test_a_model_that_cannot_take_its_own_spec_says_so():
    with pytest.raises(motorpool.CompileError, match=r"the model itself fails on random batch=1 .*dynamic_batch=False"):
        motorpool.compile(OnlyBatchFour(), torch.randn(4, 6), backend="eager")
