"""torch_compile saves an AOTInductor package: a load runs it without recompiling, keyed by the CPU's ISA."""

import json

import pytest
import torch
import torch.utils._pytree as pytree

import motorpool
from motorpool.testing import zoo

tc = pytest.importorskip("motorpool.backends.torch_compile")


def _flat(out):
    return pytree.tree_flatten(out)[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A torch_compile engine of the zoo's structured-output model, saved once for every test here."""
    model, x = zoo.get("dict_out").build(2)
    engine = motorpool.compile(model, x, backend="torch_compile", cache=False)
    path = tmp_path_factory.mktemp("aoti") / "engine"
    engine.save(path)
    return model, engine, path


def _check(engine, model, batch):
    x = zoo.get("dict_out").inputs(batch)
    with torch.inference_mode():
        got, want = _flat(engine(*x)), _flat(model(*x))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert not torch.isnan(g).any()
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_compile_builds_an_aotinductor_package(saved):
    model, engine, _ = saved
    assert engine.report.info["runtime"] == "AOTInductor"
    assert engine.report.info["isa"]["features"] and "vec_isa" in engine.report.info["isa"]
    for batch in (1, 3, 17):
        _check(engine, model, batch)


def test_manifest_marks_the_package_as_native_code_with_its_isa(saved):
    _, _, path = saved
    meta = json.loads((path / "manifest.json").read_text())["backend_metadata"]
    assert meta["format"] == "aoti" and meta["code"] is True
    assert (path / "artifact" / meta["aoti_package"]).is_file() and (path / "artifact" / meta["file"]).is_file()
    assert {k: v for k, v in meta["isa"].items() if k != "vec_isa"} == tc.isa_key("cpu")


def test_load_runs_the_package_without_recompiling(saved, monkeypatch):
    model, _, path = saved

    def no_compile(*a, **k):
        raise AssertionError("load recompiled")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    monkeypatch.setattr(torch, "compile", no_compile)
    loaded = motorpool.load(path, trust_code=True)  # an AOTInductor package is native code
    assert loaded.report.info.get("loaded") == "package"
    for batch in (1, 4):
        _check(loaded, model, batch)


def test_load_on_another_isa_recompiles_with_a_warning(saved, monkeypatch):
    model, _, path = saved
    here = tc.isa_key("cpu")
    monkeypatch.setattr(tc, "isa_key", lambda device: {**here, "features": sorted(here["features"][1:])})
    with pytest.warns(UserWarning, match=f"built for another instruction set .*lacks {here['features'][0]}"):
        loaded = motorpool.load(path, trust_code=True)
    assert here["features"][0] in loaded.report.info["recompiled"]
    _check(loaded, model, 3)


@pytest.mark.parametrize("built, here, problem", [
    ({"arch": "x86_64", "vec_isa": "avx2", "features": ["avx2", "fma"]},
     {"arch": "x86_64", "features": ["avx2", "fma"]}, None),
    ({"arch": "x86_64", "features": ["avx2", "fma"]}, {"arch": "x86_64", "features": ["avx2"]}, "lacks fma"),
    ({"arch": "x86_64", "features": ["avx2"]}, {"arch": "x86_64", "features": ["amx_tile", "avx2"]},
     "also has amx_tile"),
    ({"arch": "aarch64", "features": []}, {"arch": "x86_64", "features": []}, "arch"),
    ({"arch": "x86_64", "features": [], "cuda_capability": "8.0"},
     {"arch": "x86_64", "features": [], "cuda_capability": "9.0"}, "cuda_capability"),
])
def test_isa_mismatch(built, here, problem):
    why = tc.isa_mismatch(built, here)
    assert (why is None) if problem is None else (problem in why)


class DataDependent(torch.nn.Module):
    """Control flow on a tensor's value: torch.export refuses it, torch.compile breaks the graph and runs."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        y = self.lin(x)
        if y.sum() > 0:
            return y.relu()
        return -y


def test_a_model_torch_export_cannot_capture_falls_back_to_torch_compile():
    torch.manual_seed(0)
    model = DataDependent().eval()
    engine = motorpool.compile(model, torch.randn(2, 8), backend="torch_compile", cache=False)
    assert engine.report.info["runtime"] == "Inductor"
    assert "torch.export cannot capture" in engine.report.info["aoti_skipped"]
    x = torch.randn(3, 8)
    torch.testing.assert_close(engine(x), model(x), rtol=1e-4, atol=1e-5)
