"""The bench, profile, compile, run and cache commands, and how MODEL is named on the command line."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from motorpool.cli import main
from motorpool.plugin.errors import InputError
from motorpool.cli.modelref import load_model

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return {"logits": self.fc(x), "pair": (x.sum(1), torch.relu(self.fc(x)))}


    def build():
        torch.manual_seed(0)
        return Tiny().eval(), (torch.randn(2, 6),)


    def not_a_pair():
        return Tiny()
''')


@pytest.fixture
def models_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "mp_test_models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mp_test_models.tiny"


def test_bench_cli_on_a_factory_model(models_pkg, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["bench", f"{models_pkg}:build", "--backends", "torchscript", "--batch-sizes", "1,4",
                 "--time-budget", "0.1", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr()
    assert "torchscript" in printed.out and "p50 ms" in printed.out
    data = json.loads((out / "bench.json").read_text())
    (row,) = data["results"]
    assert row["status"] == "ok" and [b["batch"] for b in row["batches"]] == [1, 4]
    assert data["model"] == f"{models_pkg}:build"
    assert (out / "bench.md").read_text().count("| torchscript |") == 1
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_refs_and_their_errors(models_pkg, tmp_path):
    loaded = load_model(f"{models_pkg}:build")
    assert isinstance(loaded.model, torch.nn.Module) and loaded.example_inputs[0].shape == (2, 6)
    assert load_model("zoo:mlp", batch=3).example_inputs[0].shape == (3, 32)
    with pytest.raises(InputError, match="pickle"):
        load_model(str(tmp_path / "model.pt"))
    with pytest.raises(InputError, match="no module named"):
        load_model("mp_no_such_module:build")
    with pytest.raises(InputError, match="no attribute"):
        load_model(f"{models_pkg}:missing")
    with pytest.raises(InputError, match=r"must return \(model, example_inputs\)"):
        load_model(f"{models_pkg}:not_a_pair")
    with pytest.raises(InputError, match="expected package.module:factory"):
        load_model("just_a_name")
    with pytest.raises(InputError, match="no zoo model"):
        load_model("zoo:nope")


def test_pt2_model_ref(tmp_path):
    model, x = load_model("zoo:mlp").model, load_model("zoo:mlp").example_inputs
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(model, x), str(path))
    loaded = load_model(str(path))
    assert loaded.source == "torch.export"
    torch.testing.assert_close(loaded.model(*loaded.example_inputs), model(*loaded.example_inputs))
    with pytest.raises(InputError, match="no such file"):
        load_model(str(tmp_path / "missing.pt2"))


def test_compile_then_run_on_npy_files(models_pkg, tmp_path, capsys):
    engine_dir = tmp_path / "engine"
    assert main(["compile", f"{models_pkg}:build", "-o", str(engine_dir), "--backend", "torchscript"]) == 0
    assert (engine_dir / "manifest.json").is_file()
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    # a TorchScript engine is code: refused unless trusted (SECURITY.md)
    capsys.readouterr()
    assert main(["run", str(engine_dir), str(tmp_path / "x.npy"), "-o", str(out)]) == 1
    assert "--trust-code" in capsys.readouterr().err and not out.exists()  # errors go to stderr
    assert main(["run", str(engine_dir), str(tmp_path / "x.npy"), "-o", str(out), "--trust-code"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["output_logits.npy", "output_pair_0.npy", "output_pair_1.npy"]
    model, _ = load_model(f"{models_pkg}:build").model, None
    with torch.inference_mode():
        want = model(torch.from_numpy(x))
    np.testing.assert_allclose(np.load(out / "output_logits.npy"), want["logits"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(out / "output_pair_0.npy"), want["pair"][0].numpy(), rtol=1e-5, atol=1e-5)
    # a pickled object array is refused, a wrong shape is the engine's InputError
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["run", str(engine_dir), str(tmp_path / "obj.npy"), "-o", str(out), "--trust-code"]) == 2
    np.save(tmp_path / "bad.npy", np.ones((2, 7), dtype=np.float32))
    assert main(["run", str(engine_dir), str(tmp_path / "bad.npy"), "-o", str(out), "--trust-code"]) == 1
    err = capsys.readouterr().err
    assert "motorpool run: error: input 'x': expected shape" in err and "Traceback" not in err


def test_cache_commands(tmp_path, monkeypatch, capsys):
    import motorpool

    monkeypatch.setenv("MOTORPOOL_CACHE", str(tmp_path / "cache"))
    for seed in (0, 1):
        model, x = load_model("zoo:mlp").model, load_model("zoo:mlp").example_inputs
        torch.nn.init.normal_(model.net[0].weight, generator=torch.Generator().manual_seed(seed))
        motorpool.compile(model, x, backend="torchscript", cache=True)
    capsys.readouterr()
    assert main(["cache", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["entries"]) == 2 and listed["total_bytes"] > 0
    assert main(["cache", "prune"]) == 2
    assert main(["cache", "prune", "--max-size", "1"]) == 0
    assert "removed 2 engine(s)" in capsys.readouterr().out
    motorpool.compile(model, x, backend="torchscript", cache=True)
    assert main(["cache", "ls"]) == 0
    assert "torchscript" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 cached engine" in capsys.readouterr().out


def test_profile_cli(capsys):
    assert main(["profile", "zoo:mlp", "--backend", "torchscript", "--calls", "5", "--top", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backend"] == "torchscript" and data["operators"] and len(data["operators"]) <= 3
    assert set(data["stages"]) == {"check", "convert_in", "backend", "convert_out", "unflatten"}


def test_bench_cli_rejects_bad_arguments(capsys):
    assert main(["bench", "zoo:mlp", "--scenarios", "bogus", "--no-progress"]) == 2
    assert main(["bench", "zoo:none", "--no-progress"]) == 2
    assert main(["bench", "zoo:mlp", "--backends", "no_such_backend", "--no-progress"]) == 2
    assert "Choose one of" in capsys.readouterr().err
