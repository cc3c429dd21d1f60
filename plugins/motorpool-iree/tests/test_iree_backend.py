"""What the conformance suite cannot see from outside: the IREE backend's own answers when parts are missing."""

import pytest
import torch

import motorpool
from motorpool_iree import IreeBackend, backend as iree_backend


def test_a_missing_distribution_is_not_installed_with_the_fix(monkeypatch):
    real = iree_backend._version
    monkeypatch.setattr(iree_backend, "_version", lambda d: None if d == "iree-turbine" else real(d))
    av = IreeBackend().availability()
    assert av.status is motorpool.Status.NOT_INSTALLED
    assert "iree-turbine" in av.reason
    assert av.fix.startswith('pip install "motorpool-iree"')


def test_a_runtime_without_the_cpu_driver_is_an_unsupported_platform(monkeypatch):
    import iree.runtime as rt

    monkeypatch.setattr(rt, "query_available_drivers", lambda: ["cuda"])
    av = IreeBackend().availability()
    assert av.status is motorpool.Status.UNSUPPORTED_PLATFORM
    assert "local-task" in av.reason and "cuda" in av.reason


def test_undeclared_precision_is_refused_not_ignored():
    model = torch.nn.Linear(4, 2).eval()
    spec = motorpool.InputSpec.from_examples([torch.randn(2, 4)])
    options = motorpool.CompileOptions(device="cpu", precision="fp16", spec=spec)
    with pytest.raises(motorpool.UnsupportedError, match="fp16"):
        IreeBackend().compile(model, (torch.randn(2, 4),), options)


def test_the_engine_reports_what_iree_built():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).eval()
    engine = motorpool.compile(model, torch.randn(3, 4), backend="iree")
    info = engine.report.info
    assert info["target"] == "llvm-cpu" and info["driver"] == "local-task" and info["vmfb_bytes"] > 0
    assert engine.report.verification["passed"]
