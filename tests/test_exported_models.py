"""A torch.export program is a model like any other: compile, select, export, the CLI (issue 16: `model.eval()`
is not supported on ExportedProgram.module(), so every path used to fail on one)."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import motorpool
from motorpool.cli import main
from motorpool.testing import zoo


@pytest.fixture
def mlp():
    model, x = zoo.get("mlp").build(4)
    return model.eval(), x


def test_an_exported_program_and_its_module_compile(mlp):
    model, (x,) = mlp
    dynamic = torch.export.export(model, (x,), dynamic_shapes=({0: Dim("b", min=1)},))
    for subject in (dynamic, dynamic.module()):
        engine = motorpool.compile(subject, (x,), backend="torchscript", cache=False)
        assert engine.report.verification["passed"]
        assert engine.input_spec.inputs[0].name == "x" and engine.input_spec.inputs[0].shape[0] == "batch"
        fresh = torch.randn(7, 32)
        torch.testing.assert_close(engine(fresh), model(fresh), rtol=1e-4, atol=1e-5)


def test_a_static_program_makes_a_static_spec(mlp):
    """The program fixed the batch at export: the engine says so instead of failing verification."""
    model, (x,) = mlp
    static = torch.export.export(model, (x,))
    engine = motorpool.compile(static, (x,), backend="onnxruntime", cache=False)
    assert engine.input_spec.inputs[0].shape == (4, 32)
    with pytest.raises(motorpool.InputError, match="x"):
        engine(torch.randn(3, 32))


def test_the_cli_accepts_a_pt2_file(mlp, tmp_path, capsys):
    model, (x,) = mlp
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: Dim("b", min=1)},)), path)
    assert main(["compile", str(path), "-o", str(tmp_path / "engine"), "--backend", "eager", "--no-cache"]) == 0
    engine = motorpool.load(tmp_path / "engine")
    fresh = torch.randn(5, 32)
    torch.testing.assert_close(engine(fresh), model(fresh), rtol=1e-4, atol=1e-5)
