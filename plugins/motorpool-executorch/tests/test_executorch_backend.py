"""What the conformance suite cannot see from outside: the ExecuTorch backend's bounds, its refusals and its
artifact."""

import pytest

pytest.importorskip("executorch", reason='executorch is not installed: pip install -e plugins/motorpool-executorch')
pytest.importorskip("motorpool_executorch", reason="the plugin is not installed: pip install -e plugins/motorpool-executorch")

import torch  # noqa: E402

import motorpool  # noqa: E402
from motorpool.testing import zoo  # noqa: E402
from motorpool_executorch import ExecuTorchBackend, backend as et_backend  # noqa: E402


def test_a_missing_distribution_is_not_installed_with_the_fix(monkeypatch):
    monkeypatch.setattr(et_backend, "_version", lambda d: None)
    av = ExecuTorchBackend().availability()
    assert av.status is motorpool.Status.NOT_INSTALLED
    assert "executorch" in av.reason
    assert av.fix.startswith('pip install "motorpool-executorch"')


def test_a_wheel_without_the_runtime_bindings_is_not_installed(monkeypatch):
    monkeypatch.setitem(et_backend.PARTS, "runtime bindings", "extension/pybindings/_C_missing*")
    av = ExecuTorchBackend().availability()
    assert av.status is motorpool.Status.NOT_INSTALLED and "runtime bindings" in av.reason


@pytest.fixture(scope="module")
def mlp_engine():
    model, examples = zoo.get("mlp").build(batch=3)
    return model, motorpool.compile(model, examples, backend="executorch", options={"max_sizes": {"batch": 8}})


def test_the_batch_bound_is_planned_and_a_call_past_it_is_an_input_error(mlp_engine):
    model, engine = mlp_engine
    assert engine.report.info["bounds"] == {"batch": [1, 8]}
    x = torch.randn(8, 32)
    torch.testing.assert_close(engine(x), model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(motorpool.InputError, match=r"dimension 0 \(batch\) is 9, outside the bounds 1\.\.8") as err:
        engine(torch.randn(9, 32))
    assert err.value.input == "x" and err.value.expected == "1..8" and err.value.got == 9


def test_the_default_batch_bound_is_64():
    model, examples = zoo.get("tuple_out").build(batch=2)
    engine = motorpool.compile(model, examples, backend="executorch")
    assert engine.report.info["bounds"] == {"batch": [1, et_backend.DEFAULT_MAX_BATCH]} == {"batch": [1, 64]}
    x = torch.randn(64, 10)
    for got, want in zip(engine(x), model(x)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(motorpool.InputError, match="64"):
        engine(torch.randn(65, 10))


def test_a_bounded_sequence_dimension():
    model, examples = zoo.get("attention").build(batch=2)
    engine = motorpool.compile(model, examples, backend="executorch", dynamic_dims={"x": {1: "seq"}},
                               options={"max_sizes": {"seq": 16}, "min_sizes": {"seq": 4}})
    assert engine.report.info["bounds"] == {"batch": [1, 64], "seq": [4, 16]}
    x = torch.randn(3, 16, 32)
    torch.testing.assert_close(engine(x), model(x), rtol=1e-4, atol=1e-5)
    for bad in (17, 3):
        with pytest.raises(motorpool.InputError, match=rf"\(seq\) is {bad}, outside the bounds 4\.\.16"):
            engine(torch.randn(3, bad, 32))


def test_bounds_that_name_no_dynamic_dimension_or_exclude_the_example_are_refused():
    model, examples = zoo.get("mlp").build(batch=4)
    with pytest.raises(motorpool.InputError, match=r"name \['seq'\], which are not dynamic dimensions"):
        motorpool.compile(model, examples, backend="executorch", options={"max_sizes": {"seq": 8}})
    with pytest.raises(motorpool.InputError, match=r"example size \(4\) <= max_sizes \(2\)"):
        motorpool.compile(model, examples, backend="executorch", options={"max_sizes": {"batch": 2}})


def test_a_model_whose_lowering_fixes_the_batch_is_refused_and_compiles_static():
    model, examples = zoo.get("gru").build(batch=2)
    with pytest.raises(motorpool.UnsupportedError, match=r"fixed dimension 0 \('batch'\) of input 'x' to 2"):
        motorpool.compile(model, examples, backend="executorch")
    engine = motorpool.compile(model, examples, backend="executorch", dynamic_batch=False)
    x = torch.randn(2, 10, 8)
    torch.testing.assert_close(engine(x), model(x), rtol=1e-4, atol=1e-5)
    assert engine.report.verification["passed"]


def test_the_artifact_is_a_pte_program_delegated_to_xnnpack(mlp_engine, tmp_path):
    model, engine = mlp_engine
    info = engine.report.info
    assert info["delegate"] == "XnnpackBackend" and info["delegate_calls"] >= 1 and info["pte_bytes"] > 0
    path = engine.save(tmp_path / "engine")
    pte = (path / "artifact" / "model.pte").read_bytes()
    assert pte[4:8] == b"ET12" and len(pte) == info["pte_bytes"]  # the ExecuTorch flatbuffer's identifier
    loaded = motorpool.load(path)
    x = torch.randn(5, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(motorpool.InputError, match=r"outside the bounds 1\.\.8"):
        loaded(torch.randn(9, 32))  # the bounds travel with the artifact
