"""export_triton writes a Triton model repository: every config.pbtxt parses with Triton's own model-config
protobuf (shipped in tritonclient), and each model file, loaded back with its own runtime under the config's
tensor names, computes what the engine computes on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import motorpool
from motorpool.serving.triton import export_triton
from motorpool.testing import zoo
from motorpool.testing.plugin import unavailable_reason

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason='Triton\'s model-config proto comes with the triton extra: '
                                              'pip install "motorpool[triton]"')
from google.protobuf import text_format  # noqa: E402  (tritonclient's dependency)

pytestmark = pytest.mark.timeout(300)

EXPORTING = ["onnxruntime", "openvino", "torchscript"]
PLATFORM = {"onnxruntime": ("platform", "onnxruntime_onnx", ["model.onnx"]),
            "openvino": ("backend", "openvino", ["model.bin", "model.xml"]),
            "torchscript": ("platform", "pytorch_libtorch", ["model.pt"])}
CASES = ["encoder", "tuple_out"]  # int inputs + a dynamic batch; several outputs


def _params():
    for backend in EXPORTING:
        reason = unavailable_reason(backend, "cpu")
        for case in CASES:
            yield pytest.param(backend, case, id=f"{backend}-{case}",
                               marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


def parse(path) -> "model_config_pb2.ModelConfig":
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def run_model_file(backend: str, version_dir, config, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Run the exported file with the runtime Triton's backend uses, feeding it by the config's names."""
    in_names = [i.name for i in config.input]
    out_names = [o.name for o in config.output]
    if backend == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        return session.run(out_names, dict(zip(in_names, arrays)))
    if backend == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(version_dir / "model.xml"), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(dict(zip(in_names, arrays)))
        return [np.asarray(result[compiled.output(n)]) for n in out_names]
    module = torch.jit.load(str(version_dir / "model.pt"))
    out = module(*[torch.from_numpy(a) for a in arrays])
    out = out if isinstance(out, (tuple, list)) else (out,)
    assert len(out) == len(out_names)  # OUTPUT__i binds the i-th element
    return [o.numpy() for o in out]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    saved = {}
    for case in CASES:
        model, examples = zoo.get(case).build()
        for backend in EXPORTING:
            if unavailable_reason(backend, "cpu") is None:
                saved[backend, case] = motorpool.compile(model, examples, backend=backend).save(root / f"{case}-{backend}")
    return saved


@pytest.mark.parametrize("backend_name,case", list(_params()))
def test_repository_parses_and_runs_like_the_engine(engines, tmp_path, backend_name, case):
    path = engines[backend_name, case]
    engine = motorpool.load(path, trust_code=True)  # this test built it (a TorchScript engine is code)
    repo = tmp_path / "repo"
    model_dir = export_triton(path, repo, name=f"{case}_{backend_name}", max_batch_size=16,
                              preferred_batch_sizes=[4, 8], max_queue_delay_us=500)
    assert model_dir == repo / f"{case}_{backend_name}"
    key, value, files = PLATFORM[backend_name]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == files
    config = parse(model_dir / "config.pbtxt")
    assert config.name == f"{case}_{backend_name}"
    assert getattr(config, key) == value
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    spec = engine.input_spec
    assert len(config.input) == len(spec.inputs)
    dtype = {"float32": model_config_pb2.TYPE_FP32, "int64": model_config_pb2.TYPE_INT64}
    for c, t in zip(config.input, spec.inputs):
        assert c.data_type == dtype[t.dtype]
        assert list(c.dims) == [-1 if isinstance(d, str) else d for d in t.shape[1:]]  # batch -> max_batch_size
    for seed, batch in ((1, 1), (2, 5)):
        g = torch.Generator().manual_seed(seed)
        arrays = [x.numpy() for x in spec.random_inputs(generator=g, sizes={"batch": batch})]
        want = [np.asarray(y) for y in torch.utils._pytree.tree_flatten(engine(*arrays))[0]]
        got = run_model_file(backend_name, model_dir / "1", config, arrays)
        assert len(got) == len(want) == len(config.output)
        for c, w, y in zip(config.output, want, got):
            assert np.isfinite(y).all()
            assert c.data_type == model_config_pb2.TYPE_FP32
            assert list(c.dims) == list(w.shape[1:])
            np.testing.assert_allclose(y, w, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(unavailable_reason("onnxruntime", "cpu") is not None,
                    reason=str(unavailable_reason("onnxruntime", "cpu")))
def test_an_engine_object_gpu_kind_and_versions(engines, tmp_path):
    engine = motorpool.load(engines["onnxruntime", "encoder"])
    repo = tmp_path / "repo"
    export_triton(engine, repo, name="enc", instance_kind="gpu", dynamic_batching=False)
    config = parse(repo / "enc" / "config.pbtxt")
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert not config.HasField("dynamic_batching")
    with pytest.raises(motorpool.ArtifactError, match="already exists"):
        export_triton(engine, repo, name="enc")
    export_triton(engine, repo, name="enc", version=2)
    assert sorted(p.name for p in (repo / "enc").iterdir()) == ["1", "2", "config.pbtxt"]
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        export_triton(engine, repo, name="enc", version=3, max_batch_size=4, preferred_batch_sizes=[8])


def test_an_engine_without_a_triton_layout_says_which_export(tmp_path):
    model, examples = zoo.get("mlp").build()
    engine = motorpool.compile(model, examples, backend="eager")
    with pytest.raises(motorpool.UnsupportedError) as err:
        export_triton(engine, tmp_path / "repo", name="mlp")
    message = str(err.value)
    assert "eager" in message and "torch.export" in message
    assert "onnxruntime, openvino, torchscript" in message
    assert not (tmp_path / "repo").exists()


@pytest.mark.skipif(unavailable_reason("openvino", "cpu") is not None,
                    reason=str(unavailable_reason("openvino", "cpu")))
def test_cli_export_triton(engines, tmp_path, capsys):
    from motorpool.cli import main

    path = engines["openvino", "tuple_out"]
    repo = tmp_path / "repo"
    assert main(["export-triton", str(path), str(repo), "--name", "tup", "--max-batch-size", "4",
                 "--preferred-batch-sizes", "2,4"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "tritonserver --model-repository=/models" in out
    config = parse(repo / "tup" / "config.pbtxt")
    assert config.backend == "openvino" and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert main(["export-triton", str(path), str(repo), "--name", "tup"]) == 1  # version 1 exists
    assert "already exists" in capsys.readouterr().err
    assert main(["export-triton", str(path), str(repo), "--name", "bad/name"]) == 2
