"""The on-disk artifact cache: hits load instead of compiling, any key change misses, corrupt entries are
rebuilt, concurrent writers leave one valid entry, and the directory is private to the user."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import time
import warnings
from pathlib import Path

import pytest
import torch

import motorpool
from motorpool.engine import artifact_cache as ac
from motorpool.engine.manifest import read_manifest
from motorpool.testing import zoo

BACKEND = "torchscript"  # cheap to compile, serializable, and compile_cost "low" (so it is cached)


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("MOTORPOOL_CACHE", str(root))
    monkeypatch.delenv("MOTORPOOL_NO_CACHE", raising=False)
    return root


@pytest.fixture
def compile_calls(monkeypatch):
    """Counts real compiles of the cached backend."""
    backend = motorpool.get_registry().get(BACKEND)
    cls = type(backend)
    original = cls.compile
    calls = []

    def counting(self, model, example_inputs, options):
        calls.append(options)
        return original(self, model, example_inputs, options)

    monkeypatch.setattr(cls, "compile", counting)
    return calls


def _mlp(seed=0, batch=2):
    return zoo.get("mlp").build(batch=batch, seed=seed)


def _entries(root: Path) -> list[Path]:
    return [e.path for e in ac.entries(root / "engines")]


def test_second_compile_loads_from_the_cache(cache_root, compile_calls):
    model, x = _mlp()
    first = motorpool.compile(model, x, backend=BACKEND)
    assert len(compile_calls) == 1
    assert first.report.load_time_s is None
    assert first.report.info["cache"]["stored"] is True
    second = motorpool.compile(model, x, backend=BACKEND)
    assert len(compile_calls) == 1, "a matching key must load, not compile"
    assert second.report.load_time_s is not None
    assert second.report.info["cache"]["hit"] is True
    assert second.report.verification and second.report.verification == first.report.verification
    fresh = torch.randn(5, 32)
    torch.testing.assert_close(second(fresh), model(fresh), rtol=1e-5, atol=1e-5)
    assert len(_entries(cache_root)) == 1


def test_cache_false_and_env_switch_compile_every_time(cache_root, compile_calls, monkeypatch):
    model, x = _mlp()
    motorpool.compile(model, x, backend=BACKEND, cache=False)
    assert not (cache_root / "engines").exists() or not _entries(cache_root)
    monkeypatch.setenv("MOTORPOOL_NO_CACHE", "1")
    motorpool.compile(model, x, backend=BACKEND)
    motorpool.compile(model, x, backend=BACKEND)
    assert len(compile_calls) == 3
    assert not _entries(cache_root) if (cache_root / "engines").exists() else True
    monkeypatch.setenv("MOTORPOOL_NO_CACHE", "1")
    motorpool.compile(model, x, backend=BACKEND, cache=True)  # an explicit True wins over the environment
    assert len(_entries(cache_root)) == 1


def test_eager_is_not_cached(cache_root):
    model, x = _mlp()
    engine = motorpool.compile(model, x, backend="eager")
    assert "cache" not in engine.report.info
    assert not (cache_root / "engines").exists() or not _entries(cache_root)


def _changed_weights():
    model, x = _mlp()
    with torch.no_grad():
        model.net[0].bias[3] += 1e-3
    return model, x, {}


def _changed_buffer_free_code():
    class Scaled(zoo.MLP):
        def forward(self, x):
            return super().forward(x) * 2.0

    torch.manual_seed(0)
    model = Scaled().eval()
    model.load_state_dict(_mlp()[0].state_dict())
    return model, _mlp()[1], {}


def _changed_spec():
    model, x = _mlp()
    return model, x, {"dynamic_batch": False}


def _changed_options():
    model, x = _mlp()
    return model, x, {"options": {"int8": "dynamic"}}  # a declared option the fp32 compile ignores


@pytest.mark.parametrize("change", [_changed_weights, _changed_buffer_free_code, _changed_spec, _changed_options],
                         ids=["weights", "code", "spec", "options"])
def test_any_model_or_call_change_misses(cache_root, compile_calls, change):
    model, x = _mlp()
    motorpool.compile(model, x, backend=BACKEND)
    assert len(compile_calls) == 1
    other, x2, kwargs = change()
    engine = motorpool.compile(other, x2, backend=BACKEND, **kwargs)
    assert len(compile_calls) == 2, "a changed key must compile"
    assert engine.report.load_time_s is None
    assert len(_entries(cache_root)) == 2


def test_precision_change_misses(cache_root, compile_calls):
    model, x = _mlp()
    motorpool.compile(model, x, backend=BACKEND)
    engine = motorpool.compile(model, x, backend=BACKEND, precision="int8")
    assert len(compile_calls) == 2 and compile_calls[-1].precision == "int8"
    assert engine.report.load_time_s is None and engine.precision == "int8"
    again = motorpool.compile(model, x, backend=BACKEND, precision="int8")
    assert len(compile_calls) == 2 and again.report.load_time_s is not None and again.precision == "int8"


def test_backend_version_change_misses(cache_root, compile_calls, monkeypatch):
    model, x = _mlp()
    motorpool.compile(model, x, backend=BACKEND)
    cls = type(motorpool.get_registry().get(BACKEND))
    real = cls.availability

    def newer(self):
        av = real(self)
        return motorpool.Availability.ok(version=av.version + ".post1", devices=av.devices, versions=av.versions)

    monkeypatch.setattr(cls, "availability", newer)
    engine = motorpool.compile(model, x, backend=BACKEND)
    assert len(compile_calls) == 2
    assert engine.report.load_time_s is None


def test_hardware_change_misses(cache_root, compile_calls, monkeypatch):
    from motorpool.plugin import hardware

    model, x = _mlp()
    motorpool.compile(model, x, backend=BACKEND)
    monkeypatch.setattr(hardware, "fingerprint", lambda: "linux-x86_64-another-machine")
    engine = motorpool.compile(model, x, backend=BACKEND)
    assert len(compile_calls) == 2
    assert engine.report.load_time_s is None


def test_calibration_iterator_is_not_cached_but_a_list_is(cache_root):
    assert ac.calibration_fingerprint(iter([torch.randn(2, 3)])) is None
    data = [torch.randn(2, 3), torch.randn(2, 3)]
    assert ac.calibration_fingerprint(data) == ac.calibration_fingerprint([t.clone() for t in data])
    assert ac.calibration_fingerprint(data) != ac.calibration_fingerprint([data[0], data[1] + 1])


def _artifact_files(entry: Path) -> list[Path]:
    return sorted(p for p in (entry / "engine" / "artifact").rglob("*") if p.is_file())


def test_corrupt_entry_is_discarded_with_a_warning_and_rebuilt(cache_root, compile_calls):
    model, x = _mlp()
    motorpool.compile(model, x, backend=BACKEND)
    (entry,) = _entries(cache_root)
    victim = _artifact_files(entry)[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    victim.write_bytes(bytes(data))
    with pytest.warns(ac.CacheWarning, match="discarded"):
        engine = motorpool.compile(model, x, backend=BACKEND)
    assert len(compile_calls) == 2
    assert engine.report.load_time_s is None and engine.report.info["cache"]["stored"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error", ac.CacheWarning)
        again = motorpool.compile(model, x, backend=BACKEND)  # the rebuilt entry is whole
    assert again.report.load_time_s is not None and len(compile_calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "manifest", "key"])
def test_truncated_or_mismatched_entry_is_rebuilt(cache_root, compile_calls, damage):
    model, x = _mlp()
    motorpool.compile(model, x, backend=BACKEND)
    (entry,) = _entries(cache_root)
    if damage == "truncate":
        victim = _artifact_files(entry)[0]
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    elif damage == "manifest":
        (entry / "engine" / "manifest.json").write_text('{"format": "motorpool-engine", "trunc')
    else:
        key = json.loads((entry / "key.json").read_text())
        key["precision"] = "int8"
        (entry / "key.json").write_text(json.dumps(key))
    with pytest.warns(ac.CacheWarning):
        engine = motorpool.compile(model, x, backend=BACKEND)
    assert len(compile_calls) == 2 and engine.report.load_time_s is None
    fresh = torch.randn(3, 32)
    torch.testing.assert_close(engine(fresh), model(fresh), rtol=1e-5, atol=1e-5)


def test_cache_directory_is_private(cache_root):
    os.umask(old := os.umask(0o022))  # read the umask without changing it
    model, x = _mlp()
    motorpool.compile(model, x, backend=BACKEND)
    for d in (cache_root, cache_root / "engines", cache_root / "engines" / BACKEND):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    # an existing directory with looser permissions is tightened
    os.chmod(cache_root / "engines", 0o755)
    ac.cache_dir()
    assert stat.S_IMODE((cache_root / "engines").stat().st_mode) == 0o700


def _compile_in_child(root: str, queue) -> None:
    os.environ["MOTORPOOL_CACHE"] = root
    os.environ.pop("MOTORPOOL_NO_CACHE", None)
    import torch

    import motorpool
    from motorpool.testing import zoo

    torch.set_num_threads(1)
    model, x = zoo.get("mlp").build(batch=2, seed=0)
    engine = motorpool.compile(model, x, backend=BACKEND, cache=True)
    fresh = torch.randn(3, 32)
    ok = torch.allclose(engine(fresh), model(fresh), rtol=1e-5, atol=1e-5)
    queue.put((os.getpid(), ok, engine.report.info.get("cache", {})))


def test_concurrent_processes_compiling_one_key(cache_root):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    children = [ctx.Process(target=_compile_in_child, args=(str(cache_root), queue)) for _ in range(3)]
    for c in children:
        c.start()
    results = [queue.get(timeout=240) for _ in children]
    for c in children:
        c.join(timeout=60)
        assert c.exitcode == 0
    assert all(ok for _, ok, _ in results), results
    entries = _entries(cache_root)
    assert len(entries) == 1, entries
    leftovers = [p for p in (cache_root / "engines" / BACKEND).iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
    read_manifest(entries[0] / "engine")  # checksums hold
    engine = motorpool.compile(*_mlp(), backend=BACKEND, cache=True)
    assert engine.report.load_time_s is not None


def test_ls_clear_and_prune(cache_root):
    for seed in (0, 1, 2):
        model, x = _mlp(seed=seed)
        motorpool.compile(model, x, backend=BACKEND)
    found = ac.entries()
    assert len(found) == 3 and all(e.valid and e.size_bytes > 0 for e in found)
    oldest = found[-1]
    past = time.time() - 10 * 86400
    os.utime(oldest.path, (past, past))
    removed = ac.prune(older_than_s=86400)
    assert [e.path for e in removed] == [oldest.path]
    keep_one = ac.entries()[0].size_bytes
    removed = ac.prune(keep_one)
    assert len(removed) == 1 and len(ac.entries()) == 1
    assert ac.clear() == 1 and ac.entries() == []


def test_parse_size():
    assert ac.parse_size("500M") == 500 << 20
    assert ac.parse_size("2GiB") == 2 << 30
    assert ac.parse_size("1024") == 1024
    with pytest.raises(ValueError, match="500X"):
        ac.parse_size("500X")


def test_losing_the_rename_race_keeps_the_winner(cache_root, monkeypatch):
    """Another process renames its entry into place between our existence check and our rename."""
    model, x = _mlp()
    winner = motorpool.compile(model, x, backend=BACKEND, cache=False)
    loser = motorpool.compile(model, x, backend=BACKEND, cache=False)
    backend = motorpool.get_registry().get(BACKEND)
    av = backend.availability()
    key = ac.make_key(backend, av, model, winner.input_spec, precision="fp32", options={})
    entry = ac.Entry(key, ac.cache_dir())
    real_rename = os.rename

    def racing_rename(src, dst):
        if Path(dst) == entry.path and not entry.path.exists():
            monkeypatch.setattr(ac.os, "rename", real_rename)
            assert ac.Entry(key, ac.cache_dir()).store(winner) == entry.path  # the other process wins
        return real_rename(src, dst)

    monkeypatch.setattr(ac.os, "rename", racing_rename)
    assert entry.store(loser) is None
    assert "first" in loser.report.info["cache"]["reason"]
    assert _entries(cache_root) == [entry.path]
    assert not [p for p in entry.path.parent.iterdir() if p.name.startswith(".")]
    assert entry.load() is not None


def test_an_unverified_engine_is_never_cached(cache_root, compile_calls):
    model, x = _mlp()
    motorpool.compile(model, x, backend=BACKEND, cache=True, verify=False)
    assert not (cache_root / "engines").exists() or not _entries(cache_root)
    motorpool.compile(model, x, backend=BACKEND, cache=True)
    assert len(_entries(cache_root)) == 1
