"""The zentorch backend's own checks: where it runs, and that compiling leaves the caller's model unchanged."""

import copy

import pytest
import torch

import motorpool
import motorpool_zentorch.backend as zb
from motorpool_zentorch import ZentorchBackend


def test_registered_through_the_entry_point():
    assert "zentorch" in [b.name for b in motorpool.list_backends()]


@pytest.mark.parametrize("vendor", ["GenuineIntel", "CentaurHauls", ""])
def test_other_cpus_are_an_unsupported_platform_with_the_reason(monkeypatch, vendor):
    monkeypatch.delenv(zb.ANY_CPU_ENV, raising=False)
    monkeypatch.setattr(zb, "cpu_vendor", lambda: (vendor, "Some CPU"))
    monkeypatch.setattr(zb.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(zb.sys, "platform", "linux")
    av = ZentorchBackend().availability()
    if zb._version("zentorch") is None:
        assert av.status is motorpool.Status.NOT_INSTALLED and "motorpool-zentorch" in av.fix
        return
    assert av.status is motorpool.Status.UNSUPPORTED_PLATFORM
    assert "AMD EPYC" in av.reason and (vendor or "unknown vendor") in av.reason and zb.ANY_CPU_ENV in av.reason


def test_arm_is_an_unsupported_platform(monkeypatch):
    monkeypatch.setattr(zb.platform, "machine", lambda: "aarch64")
    assert "x86-64" in zb.platform_problem()


def test_amd_epyc_is_a_supported_platform(monkeypatch):
    monkeypatch.delenv(zb.ANY_CPU_ENV, raising=False)
    monkeypatch.setattr(zb, "cpu_vendor", lambda: ("AuthenticAMD", "AMD EPYC 9B45"))
    monkeypatch.setattr(zb.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(zb.sys, "platform", "linux")
    assert zb.platform_problem() is None


def test_the_paired_torch_release_is_checked(monkeypatch):
    monkeypatch.setattr(zb, "platform_problem", lambda: None)
    real = zb._version
    monkeypatch.setattr(zb, "_version", lambda d: "2.11.0.3" if d == "zentorch" else real(d))
    if zb.importlib.util.find_spec("zentorch") is None:
        pytest.skip("zentorch is not installed: pip install motorpool-zentorch")
    av = ZentorchBackend().availability()
    assert av.status is motorpool.Status.NOT_INSTALLED
    assert "pairs with torch 2.11" in av.reason and "zentorch==" in av.fix


def test_compile_leaves_the_callers_model_unchanged():
    av = ZentorchBackend().availability()
    if not av.available:
        pytest.skip(f"zentorch: {av.status.value}: {av.reason}")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 10)).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    engine = motorpool.compile(model, (x,), backend="zentorch")
    fresh = torch.randn(5, 3, 16, 16)
    with torch.inference_mode():
        expected = model(fresh)
    torch.testing.assert_close(engine(fresh), expected, rtol=1e-4, atol=1e-4)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert after[name].shape == tensor.shape and after[name].stride() == tensor.stride(), name
        assert torch.equal(after[name], tensor), name
