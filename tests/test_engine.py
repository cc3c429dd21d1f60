"""The Engine and compile/load contracts, on the PyTorch backends (no optional runtime needed)."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import motorpool
from motorpool import Availability, Backend, Capabilities, Runner
from motorpool.backends.eager import EagerBackend
from motorpool.backends.torchscript import TorchScriptBackend
from motorpool.testing import zoo


@pytest.fixture(scope="module")
def mlp_engine():
    model, x = zoo.get("mlp").build(batch=4)
    return model, motorpool.compile(model, x, backend="torchscript")


@pytest.fixture(scope="module")
def encoder_engine():
    model, ex = zoo.get("encoder").build(batch=2)
    return model, motorpool.compile(model, ex, backend="eager")


def test_called_like_the_model_at_any_batch(mlp_engine):
    model, engine = mlp_engine
    for b in (1, 5, 17):
        x = torch.randn(b, 32)
        torch.testing.assert_close(engine(x), model(x), rtol=1e-5, atol=1e-5)
    assert engine.backend == "torchscript" and engine.device == "cpu" and engine.precision == "fp32"


def test_numpy_in_numpy_out(mlp_engine):
    model, engine = mlp_engine
    x = np.random.default_rng().standard_normal((3, 32)).astype(np.float32)
    y = engine(x)
    assert isinstance(y, np.ndarray) and y.shape == (3, 10)
    np.testing.assert_allclose(y, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_input_spec_names_and_dynamic_batch(encoder_engine):
    _, engine = encoder_engine
    spec = engine.input_spec
    assert spec.names == ["input_ids", "attention_mask"]
    assert spec.inputs[0].shape == ("batch", 16) and spec.inputs[0].dtype == "int64"
    assert spec.inputs[1].low == 0 and spec.inputs[1].high == 1  # masks drawn within the examples' range


@pytest.mark.parametrize("call, match", [
    (lambda e: e(), r"expected 1 input\(s\).*got 0"),
    (lambda e: e(torch.randn(2, 32), torch.randn(2, 32)), r"expected 1 input\(s\).*got 2"),
    (lambda e: e(torch.randn(32)), r"input 'x': expected rank 2 \['batch', 32\], got rank 1"),
    (lambda e: e(torch.randn(2, 31)), r"input 'x': expected shape \['batch', 32\], got \[2, 31\]"),
    (lambda e: e(torch.randn(2, 32, dtype=torch.float64)), r"input 'x': expected dtype float32, got float64"),
    (lambda e: e(np.zeros((2, 32), dtype=np.int32)), r"input 'x': expected dtype float32, got int32"),
    (lambda e: e([[1.0] * 32]), r"input 'x': expected a torch.Tensor or numpy.ndarray .* got list"),
    (lambda e: e(torch.randn(0, 32)), r"must be at least 1"),
    (lambda e: e(torch.randn(2, 32, device="meta")), r"expected a tensor on cpu, got one on meta"),
])
def test_bad_input_raises_input_error(mlp_engine, call, match):
    _, engine = mlp_engine
    with pytest.raises(motorpool.InputError, match=match) as info:
        call(engine)
    assert info.value.expected is not None and info.value.got is not None


def test_shared_dynamic_dimension_must_agree(encoder_engine):
    _, engine = encoder_engine
    with pytest.raises(motorpool.InputError, match=r"'attention_mask': dimension 0 \('batch'\) is 3 but"):
        engine(torch.randint(1, 100, (2, 16)), torch.ones(3, 16, dtype=torch.int64))


def test_structured_outputs_keep_their_shape():
    model, x = zoo.get("dict_out").build(batch=3)
    engine = motorpool.compile(model, x, backend="torchscript")
    out, ref = engine(*x), model(*x)
    assert set(out) == {"logits", "box", "extra"} and isinstance(out["extra"], tuple)
    torch.testing.assert_close(out, ref)


def test_threads_each_get_their_own_answer(mlp_engine):
    model, engine = mlp_engine
    inputs = [torch.randn(1 + i % 4, 32) for i in range(64)]
    expected = [model(x) for x in inputs]
    results = [None] * len(inputs)

    def worker(k):
        for i in range(k, len(inputs), 8):
            results[i] = engine(inputs[i])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_save_and_load_in_a_fresh_process(mlp_engine, tmp_path):
    model, engine = mlp_engine
    engine.save(tmp_path / "eng")
    manifest = json.loads((tmp_path / "eng" / "manifest.json").read_text())
    assert manifest["backend"] == "torchscript" and manifest["precision"] == "fp32"
    assert manifest["input_spec"]["inputs"][0]["shape"] == ["batch", 32]
    assert manifest["verification"]["passed"] and manifest["hardware"]["fingerprint"]
    assert all(len(v) == 64 for v in manifest["checksums"].values())
    x = torch.randn(6, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    code = (f"import numpy as np, motorpool; e = motorpool.load({str(tmp_path / 'eng')!r}, trust_code=True); "
            f"np.save({str(tmp_path / 'y.npy')!r}, e(np.load({str(tmp_path / 'x.npy')!r})))")
    subprocess.run([sys.executable, "-c", code], check=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_corrupt_artifact_is_refused(mlp_engine, tmp_path):
    _, engine = mlp_engine
    path = engine.save(tmp_path / "eng")
    art = next(p for p in (path / "artifact").iterdir() if p.is_file())
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(motorpool.ArtifactError, match="checksum mismatch"):
        motorpool.load(path)


def test_save_never_clobbers_and_never_half_writes(mlp_engine, tmp_path, monkeypatch):
    _, engine = mlp_engine
    path = engine.save(tmp_path / "eng")
    with pytest.raises(motorpool.ArtifactError, match="already exists"):
        engine.save(path)

    def boom(directory):
        (directory / "partial.bin").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(engine.runner, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        engine.save(tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eng"]


def test_load_says_when_made_for_other_hardware(mlp_engine, tmp_path):
    _, engine = mlp_engine
    path = engine.save(tmp_path / "eng")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["hardware"] = {"fingerprint": "linux-x86_64-0000000000000000", "summary": "some other CPU"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="made for other hardware.*some other CPU"):
        motorpool.load(path, trust_code=True)  # a TorchScript engine: code (SECURITY.md)
    with pytest.raises(motorpool.ArtifactError, match="other hardware"):
        motorpool.load(path, strict=True, trust_code=True)


def test_eager_save_uses_torch_export(tmp_path):
    model, ex = zoo.get("two_inputs").build(batch=2)
    engine = motorpool.compile(model, ex, backend="eager")
    loaded = motorpool.load(engine.save(tmp_path / "e"))
    a, b = torch.randn(5, 16), torch.randn(5, 8)
    torch.testing.assert_close(loaded(a, b), model(a, b))


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # torch.export cannot capture data-dependent control flow
            return x * 2
        return x - 1


def test_unexportable_model_says_so_when_saved(tmp_path):
    engine = motorpool.compile(DataDependent(), torch.randn(2, 3), backend="eager", verify=False)
    with pytest.raises(motorpool.UnsupportedError, match="torch.export cannot capture this model"):
        engine.save(tmp_path / "e")
    assert not (tmp_path / "e").exists()


# -- compile's choices and failures -----------------------------------------------------------------

class WrongRunner(Runner):
    def __init__(self, model, factor):
        self.model, self.factor, self.info = model, factor, {}

    def run(self, inputs):
        with torch.inference_mode():
            return [self.model(*inputs) * self.factor]

    def save(self, directory):
        raise motorpool.UnsupportedError("cannot save")


def _backend(name, *, factor=1.0, avail=None, priority=50):
    class B(Backend):
        capabilities = Capabilities(priority={"*": priority})

        def availability(self):
            return avail or Availability.ok(version="1", devices=["cpu"])

        def compile(self, model, example_inputs, options):
            return WrongRunner(model, factor)

        def load(self, directory, metadata, options):
            raise motorpool.UnsupportedError("cannot load")

    B.name = name
    B.__name__ = f"{name.title()}Backend"
    return B


def test_wrong_numbers_fail_verification(fresh_registry):
    fresh_registry.register(_backend("wrong", factor=1.01))
    model, x = zoo.get("mlp").build()
    with pytest.raises(motorpool.VerificationError, match="wrong does not match eager") as info:
        motorpool.compile(model, x, backend="wrong")
    assert info.value.figures["max_abs_err"] > 0 and not info.value.figures["passed"]


def test_nan_never_passes(fresh_registry):
    fresh_registry.register(_backend("nan", factor=float("nan")))
    model, x = zoo.get("mlp").build()
    with pytest.raises(motorpool.VerificationError, match="NaN"):
        motorpool.compile(model, x, backend="nan")


def test_auto_skips_failures_and_reports_each(fresh_registry):
    fresh_registry.register(_backend("wrong", factor=2.0, priority=1))
    fresh_registry.register(_backend("gone", avail=Availability.not_installed("gone-rt", "gone"), priority=2))
    fresh_registry.register(_backend("right", priority=3))
    model, x = zoo.get("mlp").build()
    engine = motorpool.compile(model, x)
    assert engine.backend == "right"
    by_name = {c.backend: c for c in engine.report.candidates}
    assert by_name["wrong"].status == "rejected" and "does not match" in by_name["wrong"].reason
    assert by_name["gone"].status == "skipped" and "gone-rt is not installed" in by_name["gone"].reason
    assert by_name["right"].status == "chosen"


def test_named_unavailable_backend_raises_with_fix(fresh_registry):
    fresh_registry.register(_backend("gone", avail=Availability.not_installed("gone-rt", "gone")))
    model, x = zoo.get("mlp").build()
    with pytest.raises(motorpool.BackendUnavailable, match=r'gone-rt is not installed.*pip install "motorpool\[gone\]"'):
        motorpool.compile(model, x, backend="gone")


def test_a_list_that_all_fails_gives_every_reason(fresh_registry):
    fresh_registry.register(_backend("wrong", factor=2.0))
    fresh_registry.register(_backend("gone", avail=Availability.no_device("no toy device")))
    model, x = zoo.get("mlp").build()
    with pytest.raises(motorpool.CompileError, match="no backend could compile") as info:
        motorpool.compile(model, x, backend=["wrong", "gone"])
    assert set(info.value.reasons) == {"wrong", "gone"}


def test_unknown_backend_lists_the_valid_ones(fresh_registry):
    fresh_registry.register(EagerBackend)
    fresh_registry.register(TorchScriptBackend)
    model, x = zoo.get("mlp").build()
    with pytest.raises(motorpool.UnknownBackendError, match="Choose one of: eager, torchscript"):
        motorpool.compile(model, x, backend="tensorflow")


def test_no_silent_device_fallback():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model, x = zoo.get("mlp").build()
    with pytest.raises(motorpool.BackendUnavailable, match="sees no device 'cuda'.*does not fall back"):
        motorpool.compile(model, x, backend="eager", device="cuda")


def test_bad_precision_and_examples():
    model, x = zoo.get("mlp").build()
    with pytest.raises(ValueError, match="precision 'fp8' is not one of"):
        motorpool.compile(model, x, backend="eager", precision="fp8")
    with pytest.raises(motorpool.InputError, match="example_inputs"):
        motorpool.compile(model, "not a tensor", backend="eager")


def test_compile_puts_model_in_eval_mode():
    model, x = zoo.get("cnn").build(batch=2)
    model.train()
    engine = motorpool.compile(model, x, backend="eager")
    assert not model.training
    torch.testing.assert_close(engine(*x), model(*x))


def test_a_manifest_cannot_steer_load_options(tmp_path):
    """options in a manifest shape the compile only: a crafted one cannot point OpenVINO's cache elsewhere,
    and a key the backend does not declare is warned about and ignored."""
    import json

    from motorpool.engine.manifest import write_manifest

    pytest.importorskip("openvino", reason='openvino is not installed: pip install "motorpool[openvino]"')
    model, x = zoo.get("mlp").build(2)
    engine = motorpool.compile(model, x, backend="openvino", cache=False)
    path = engine.save(tmp_path / "e")
    manifest = json.loads((path / "manifest.json").read_text())
    elsewhere = tmp_path / "planted-cache"
    manifest["options"] = {"cache_dir": str(elsewhere), "load_library": "/tmp/evil.so"}
    write_manifest(path, {k: v for k, v in manifest.items() if k != "checksums"})
    with pytest.warns(UserWarning, match=r"options \['load_library'\] are not options of openvino; ignored"):
        loaded = motorpool.load(path)
    torch.testing.assert_close(loaded(x[0]), engine(x[0]))
    assert not elsewhere.exists()


def test_load_takes_the_load_time_options_a_backend_declares(tmp_path):
    pytest.importorskip("onnxruntime", reason='onnxruntime is not installed: pip install "motorpool[onnxruntime]"')
    model, x = zoo.get("mlp").build(2)
    path = motorpool.compile(model, x, backend="onnxruntime", cache=False).save(tmp_path / "e")
    engine = motorpool.load(path, options={"num_threads": 1})
    assert engine.runner.info["session"]["intra_op_num_threads"] == 1
    torch.testing.assert_close(engine(x[0]), model(x[0]), rtol=1e-4, atol=1e-5)
    with pytest.raises(motorpool.OptionError, match="'opset' is not an option of backend 'onnxruntime' when "
                                                    "loading.*valid: num_threads"):
        motorpool.load(path, options={"opset": 17})
