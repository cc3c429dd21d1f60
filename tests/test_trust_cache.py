"""A cached engine is the model's engine (issue 13): keys, verified hits, identities, permissions, corruption."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

import motorpool


def _module(*names: str):
    """The first of ``names`` that imports (modules move between core's subpackages)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"none of {names} imports")


def _cache_warning():
    return _module("motorpool.engine.artifact_cache", "motorpool.artifact_cache").CacheWarning


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("MOTORPOOL_CACHE", str(root))
    monkeypatch.delenv("MOTORPOOL_NO_CACHE", raising=False)
    return root


def _compile(model, x, **kw):
    return motorpool.compile(model, (x,), backend="torchscript", cache=True, **kw)


class Scaled(torch.nn.Module):
    def __init__(self, scale: float = 3.0):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)
        self.scale = scale  # a plain attribute, neither parameter nor buffer

    def forward(self, x):
        return self.helper(self.lin(x)) * self.scale

    def helper(self, y):
        return torch.relu(y)


def _close(engine, model, x):
    with torch.inference_mode():
        want = model(x)
    torch.testing.assert_close(engine(x), want, atol=1e-5, rtol=1e-4)


# -- the key covers what the backend compiles ----------------------------------------------------------------


def test_plain_attribute_change_misses_the_cache(cache_root):
    x = torch.randn(2, 4)
    model = Scaled(3.0).eval()
    _compile(model, x)
    model.scale = 5.0
    engine = _compile(model, x)
    assert engine.report.info["cache"]["hit"] is False, "a changed plain attribute hit the old entry"
    _close(engine, model, torch.randn(3, 4))


def test_forward_hook_misses_the_cache(cache_root):
    x = torch.randn(2, 4)
    model = Scaled().eval()
    _compile(model, x)
    model.lin.register_forward_hook(lambda module, args, out: out + 1.0)
    engine = _compile(model, x)
    assert engine.report.info["cache"]["hit"] is False, "a new forward hook hit the old entry"
    _close(engine, model, torch.randn(3, 4))


def test_changed_method_that_forward_calls_misses_the_cache(cache_root, monkeypatch):
    x = torch.randn(2, 4)
    model = Scaled().eval()
    _compile(model, x)
    monkeypatch.setattr(Scaled, "helper", lambda self, y: torch.sigmoid(y))
    engine = _compile(model, x)
    assert engine.report.info["cache"]["hit"] is False, "a changed helper method hit the old entry"
    _close(engine, model, torch.randn(3, 4))


def test_unchanged_model_still_hits(cache_root):
    x = torch.randn(2, 4)
    _compile(Scaled().eval(), x)
    engine = _compile(Scaled().eval(), x)
    assert engine.report.info["cache"]["hit"] is True


# -- a hit is verified ---------------------------------------------------------------------------------------


def test_a_cache_hit_that_does_not_compute_the_model_is_discarded_and_rebuilt(cache_root):
    x = torch.randn(2, 4)
    model = Scaled().eval()
    mine = _compile(model, x).report.info["cache"]["path"]
    other = Scaled().eval()
    with torch.no_grad():
        other.lin.weight.mul_(-2.0)
    theirs = _compile(other, x).report.info["cache"]["path"]
    assert mine != theirs
    # the entry under this model's key now holds another model's engine, whole and checksummed
    shutil.rmtree(Path(mine) / "engine")
    shutil.copytree(Path(theirs) / "engine", Path(mine) / "engine")

    with pytest.warns(_cache_warning(), match="does not compute"):
        engine = _compile(model, x)
    assert engine.report.info["cache"]["hit"] is False
    _close(engine, model, torch.randn(3, 4))


# -- the decision cache keys on the same fingerprint ---------------------------------------------------------


def test_decision_key_sees_plain_attributes_hooks_and_methods(monkeypatch):
    # the one model fingerprint, which both the artifact cache and the decision cache key on
    decisions = _module("motorpool.engine.fingerprint", "motorpool.decisions")
    model = Scaled().eval()
    base = decisions.model_fingerprint(model)
    model.scale = 4.0
    assert decisions.model_fingerprint(model) != base
    model.scale = 3.0
    assert decisions.model_fingerprint(model) == base
    handle = model.lin.register_forward_pre_hook(lambda module, args: (args[0] * 2,))
    assert decisions.model_fingerprint(model) != base
    handle.remove()
    monkeypatch.setattr(Scaled, "helper", lambda self, y: torch.tanh(y))
    assert decisions.model_fingerprint(model) != base


# -- the prediction cache identifies an engine by its content -----------------------------------------------


class Threshold(torch.nn.Module):
    """1 where a row's sum exceeds ``t``: a discrete output that is 0 on any ordinary probe."""

    def __init__(self, t: float):
        super().__init__()
        self.register_buffer("t", torch.tensor(float(t)))

    def forward(self, x):
        return (x.sum(dim=1, keepdim=True) > self.t).to(torch.int64)


def test_engines_with_equal_outputs_on_the_probe_do_not_share_entries():
    x = torch.randn(2, 4)
    a = motorpool.compile(Threshold(50.0).eval(), (x,), backend="eager", cache=False)
    b = motorpool.compile(Threshold(60.0).eval(), (x,), backend="eager", cache=False)
    store = motorpool.LRUStore()
    ca, cb = motorpool.CachedEngine(a, store), motorpool.CachedEngine(b, store)
    assert ca.identity != cb.identity, "two engines computing different functions share an identity"
    q = torch.full((1, 4), 55.0 / 4)
    assert int(ca(q)) == 1
    assert int(cb(q)) == int(b(q)) == 0


def test_identity_of_a_loaded_engine_follows_its_artifact(tmp_path):
    x = torch.randn(2, 4)
    for i, t in enumerate((50.0, 60.0)):
        motorpool.compile(Threshold(t).eval(), (x,), backend="eager", cache=False).save(tmp_path / f"e{i}")
    first = motorpool.CachedEngine(motorpool.load(tmp_path / "e0")).identity
    assert first == motorpool.CachedEngine(motorpool.load(tmp_path / "e0")).identity
    assert first != motorpool.CachedEngine(motorpool.load(tmp_path / "e1")).identity


# -- cache directories are private --------------------------------------------------------------------------


def test_cache_directories_are_0o700(cache_root):
    decisions = _module("motorpool.selection.decisions", "motorpool.decisions")
    _compile(Scaled().eval(), torch.randn(2, 4))
    cache = decisions.DecisionCache()
    cache.put(decisions.Decision(key="k" * 32, winner="eager", objective="p50",
                                 ranking=[{"backend": "eager", "score": 1.0}]))
    checked = [cache_root, cache_root / "engines", cache_root / "decisions"]
    for d in checked:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, f"{d} is {oct(stat.S_IMODE(d.stat().st_mode))}"


@pytest.mark.skipif(not any(b.name == "openvino" and b.available for b in motorpool.list_backends()),
                    reason='openvino is not available here (pip install "motorpool[openvino]")')
def test_openvino_model_cache_dir_is_0o700(cache_root, tmp_path):
    x = torch.randn(2, 4)
    motorpool.compile(Scaled().eval(), (x,), backend="openvino", cache=False).save(tmp_path / "ov")
    motorpool.load(tmp_path / "ov")
    d = cache_root / "openvino"
    assert d.is_dir() and stat.S_IMODE(d.stat().st_mode) == 0o700, oct(stat.S_IMODE(d.stat().st_mode))


def test_group_writable_cache_root_is_not_used(cache_root):
    cache_root.mkdir()
    os.chmod(cache_root, 0o777)
    with pytest.warns(_cache_warning(), match="writable by"):
        engine = _compile(Scaled().eval(), torch.randn(2, 4))
    assert not (engine.report.info.get("cache") or {}).get("stored")
    assert not (cache_root / "engines").exists() or not any((cache_root / "engines").iterdir())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown a directory")
def test_cache_root_owned_by_another_user_is_not_used(cache_root):
    (cache_root / "engines").mkdir(parents=True, mode=0o700)
    os.chown(cache_root, 65534, 65534)
    os.chown(cache_root / "engines", 65534, 65534)
    with pytest.warns(_cache_warning(), match="owned by"):
        engine = _compile(Scaled().eval(), torch.randn(2, 4))
    assert not (engine.report.info.get("cache") or {}).get("stored")
    assert not any((cache_root / "engines").iterdir())


def test_cache_root_that_cannot_be_created_turns_the_cache_off(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MOTORPOOL_CACHE", str(blocker / "cache"))
    with pytest.warns(_cache_warning(), match="cache"):
        engine = _compile(Scaled().eval(), torch.randn(2, 4))
    _close(engine, Scaled().eval(), torch.randn(3, 4))


# -- corrupt caches are discarded ----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"\xff\xfe\x00 not utf-8 \x9c",
    json.dumps({"format": "motorpool-decision", "format_version": 1, "key": "k", "winner": "eager",
                "objective": "p50", "ranking": [1, 2], "versions": "x"}).encode(),
    json.dumps({"format": "motorpool-decision", "format_version": 1, "key": "k", "winner": "eager",
                "objective": "p50", "ranking": [{"backend": 3}], "versions": {"eager": 5}}).encode(),
], ids=["not-utf8", "wrong-types", "wrong-nested-types"])
def test_corrupt_decision_files_are_warned_and_discarded(cache_root, content):
    decisions = _module("motorpool.selection.decisions", "motorpool.decisions")
    cache = decisions.DecisionCache()
    path = cache.path("k")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with pytest.warns(UserWarning, match="decision"):
        assert cache.get("k", {"eager": {"torch": torch.__version__}}) is None
    assert not path.exists(), "a corrupt decision file was left to be read again"


def _mistype(manifest_path: Path) -> None:
    manifest = json.loads(manifest_path.read_text())
    manifest["input_spec"] = {"inputs": 5}
    manifest["backend_metadata"] = ["not", "a", "dict"]
    manifest_path.write_text(json.dumps(manifest))


def test_mistyped_manifest_in_the_artifact_cache_is_discarded_and_rebuilt(cache_root):
    x = torch.randn(2, 4)
    model = Scaled().eval()
    entry = Path(_compile(model, x).report.info["cache"]["path"])
    _mistype(entry / "engine" / "manifest.json")
    with pytest.warns(_cache_warning(), match="discarded"):
        engine = _compile(model, x)
    assert engine.report.info["cache"]["hit"] is False and engine.report.info["cache"]["stored"] is True
    _close(engine, model, torch.randn(3, 4))
    assert _compile(model, x).report.info["cache"]["hit"] is True


def test_load_of_a_mistyped_manifest_raises_artifact_error(tmp_path):
    motorpool.compile(Scaled().eval(), (torch.randn(2, 4),), backend="eager", cache=False).save(tmp_path / "e")
    _mistype(tmp_path / "e" / "manifest.json")
    with pytest.raises(motorpool.ArtifactError, match="manifest"):
        motorpool.load(tmp_path / "e")


# -- the reference is computed before the backend sees the model --------------------------------------------


def test_verification_reference_comes_before_a_backend_that_rewrites_the_model(fresh_registry):
    """A backend that rewrites weights in place (as some CPU backends do) must not move the reference with it:
    verification compares the engine with what the user's model computed before the backend touched it."""
    from motorpool.plugin import Availability, Backend, Capabilities, Runner, TorchRunner

    class InPlace(TorchRunner, Runner):
        def __init__(self, module):
            self._init_torch(module, device="cpu", precision="fp32")

        def save(self, directory):
            raise motorpool.UnsupportedError("not serializable", backend="inplace")

    class RewritesWeights(Backend):
        name = "inplace"
        capabilities = Capabilities(serializable=False, compile_cost="none")

        def code_in_artifact(self, directory, metadata):
            return []

        def availability(self):
            return Availability.ok(version="1", devices=["cpu"])

        def compile(self, model, example_inputs, options):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(2.0)  # "optimizes" the user's module in place
            return InPlace(model)

        def load(self, directory, metadata, options):
            raise NotImplementedError

    fresh_registry.register(RewritesWeights)
    with pytest.raises(motorpool.VerificationError, match="does not match eager"):
        motorpool.compile(Scaled().eval(), (torch.randn(2, 4),), backend="inplace", cache=False)
