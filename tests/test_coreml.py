"""The ``coreml`` backend: availability, conversion of every zoo model (runs on Linux), the runner's logic.

Core ML only runs models on macOS; here conversion is exercised for real (coremltools converts on any OS)
and each converted program's interface is checked against the model. Running is covered by
``motorpool.load`` on a Mac, which verifies the numerics stored at export.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import motorpool
from motorpool import BackendUnavailable, CompileOptions, InputError, Status, UnsupportedError
from motorpool.backends.coreml import ARTIFACT, MACOS_ONLY, CoreMLBackend, CoreMLRunner
from motorpool.backends.coreml.convert import check_program, dim_ranges
from motorpool.plugin.spec import InputSpec, input_names
from motorpool.testing.zoo import ZOO
from motorpool.plugin.helpers import flatten_outputs

BACKEND = CoreMLBackend()
AVAILABILITY = BACKEND.availability()
needs_coremltools = pytest.mark.skipif(AVAILABILITY.status in (Status.NOT_INSTALLED, Status.IMPORT_FAILED),
                                       reason=AVAILABILITY.reason)
on_linux = pytest.mark.skipif(sys.platform == "darwin", reason="checks the non-macOS answer")

#: zoo models coremltools cannot convert at all, with its reason (a strict xfail: fixing one fails the test)
KNOWN_GAPS: dict[str, str] = {}


def _spec(model, examples) -> InputSpec:
    return InputSpec.from_examples(examples, names=input_names(model, len(examples)))


def _export(name: str, tmp_path, precision: str = "fp32", device: str = "all", **extra):
    model, examples = ZOO[name].build(2)
    spec = _spec(model, examples)
    options = CompileOptions(device=device, precision=precision, spec=spec, extra=extra)
    metadata = BACKEND.export(model, examples, options, tmp_path)
    with torch.inference_mode():
        reference = flatten_outputs(model(*examples))
    return metadata, spec, reference


_CONVERTED: dict[str, tuple] = {}  # fp32 conversions of the zoo, shared by the tests that compare with them


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    def get(name: str):
        if name not in _CONVERTED:
            _CONVERTED[name] = _export(name, tmp_path_factory.mktemp(name)) + (tmp_path_factory.getbasetemp(),)
        return _CONVERTED[name]
    return get


@on_linux
@needs_coremltools
def test_availability_on_linux_says_macos_only_and_can_export():
    av = AVAILABILITY
    assert av.status is Status.UNSUPPORTED_PLATFORM
    assert av.reason == MACOS_ONLY == "Core ML runs models only on macOS"
    assert av.can_export and not av.available
    assert av.version and av.versions["coremltools"] == av.version
    assert "motorpool.export" in av.fix
    row = next(r for r in motorpool.list_backends() if r.name == "coreml")
    assert (row.available, row.can_export, row.reason) == (False, True, MACOS_ONLY)


@on_linux
@needs_coremltools
def test_compile_on_linux_raises_backend_unavailable_with_the_reason():
    model, examples = ZOO["mlp"].build(2)
    with pytest.raises(BackendUnavailable, match="Core ML runs models only on macOS"):
        motorpool.compile(model, examples, backend="coreml")


@needs_coremltools
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_GAPS[n], strict=True))
                                  if n in KNOWN_GAPS else n for n in ZOO])
def test_every_zoo_model_converts_with_a_checked_interface(name, tmp_path):
    metadata, spec, reference = _export(name, tmp_path)
    _CONVERTED[name] = (metadata, spec, reference, tmp_path)
    program = metadata["program"]
    assert (tmp_path / ARTIFACT / "Manifest.json").is_file()
    assert [i["name"] for i in program["inputs"]] == spec.names
    assert len(program["outputs"]) == len(reference)
    assert program["op_count"] == sum(program["ops"].values()) > 0
    assert metadata["format"] == "mlprogram" and metadata["compute_precision"] == "FLOAT32"
    assert metadata["compute_units"] == "ALL"
    # flexible batch: every input's first dimension takes 1..64, the example's size is the default shape
    assert metadata["flexible_shapes"], metadata["failed_attempts"]
    for i in program["inputs"]:
        assert i["ranges"][0] == [1, 64] and i["shape"][0] == 2
    for shape, ref in zip(program["output_shapes"], reference):
        assert len(shape) == ref.dim()
    # the package on disk is the program described: read it back
    import coremltools as ct

    reread = ct.models.MLModel(str(tmp_path / ARTIFACT), skip_model_load=True).get_spec()
    assert [f.name for f in reread.description.input] == spec.names
    assert [f.name for f in reread.description.output] == [o["name"] for o in program["outputs"]]
    if "recurrent" in ZOO[name].tags:  # coremltools' torch.export frontend has no GRU/LSTM: traced, and said why
        assert metadata["converted_from"] == "torch.jit.trace"
        assert any(f"Unsupported fx node {name}" in a for a in metadata["failed_attempts"]), \
            metadata["failed_attempts"]
    else:
        assert metadata["converted_from"] == "torch.export" and not metadata["failed_attempts"]


@needs_coremltools
def test_fp16_sets_the_compute_precision(tmp_path, converted):
    fp32 = converted("mlp")[0]
    fp16, _, _ = _export("mlp", tmp_path, precision="fp16")
    assert fp16["compute_precision"] == "FLOAT16"
    # an fp16 program keeps fp32 inputs and outputs and casts at both ends
    assert fp16["program"]["ops"].get("cast", 0) > fp32["program"]["ops"].get("cast", 0)
    assert fp16["program"]["inputs"][0]["dtype"] == "float32"


@needs_coremltools
def test_int8_quantizes_weights_or_says_it_cannot(tmp_path):
    metadata, _, _ = _export("mlp", tmp_path / "mlp", precision="int8")
    assert metadata["int8_quantized_weights"] > 0
    assert metadata["program"]["ops"].get("constexpr_affine_dequantize", 0) == metadata["int8_quantized_weights"]
    with pytest.raises(UnsupportedError, match="large enough"):
        _export("tuple_out", tmp_path / "tiny", precision="int8")


@needs_coremltools
def test_device_picks_compute_units_and_max_sizes_bound_the_range(tmp_path):
    metadata, _, _ = _export("two_inputs", tmp_path / "cpu", device="cpu", max_sizes={"batch": 256})
    assert metadata["compute_units"] == "CPU_ONLY"
    assert [i["ranges"][0] for i in metadata["program"]["inputs"]] == [[1, 256], [1, 256]]
    with pytest.raises(UnsupportedError, match="Neural Engine computes in fp16"):
        _export("mlp", tmp_path / "ane", device="ane")
    assert BACKEND.default_device(AVAILABILITY) == "all"  # device="auto": Core ML places each op


def test_dim_ranges_check_their_options():
    spec = InputSpec.from_examples((torch.randn(4, 8),))
    assert dim_ranges(spec, {}) == {"batch": (1, 4, 64)}
    assert dim_ranges(spec, {"max_sizes": {"batch": 8}, "min_sizes": {"batch": 2}}) == {"batch": (2, 4, 8)}
    with pytest.raises(InputError, match="not dynamic dimensions"):
        dim_ranges(spec, {"max_sizes": {"seq": 8}})
    with pytest.raises(InputError, match="min"):
        dim_ranges(spec, {"max_sizes": {"batch": 3}})


def test_check_program_names_each_mismatch():
    spec = InputSpec.from_examples((torch.randn(2, 3),), names=["x"])
    described = {"inputs": [{"name": "input0", "shape": [2, 3]}], "outputs": [{"name": "y"}],
                 "op_count": 0, "output_shapes": [["s0", 7]]}
    problems = check_program(described, spec, [torch.randn(2, 5), torch.randn(2)])
    assert any("inputs are ['input0'], expected ['x']" in p for p in problems)
    assert any("1 outputs, the model returns 2" in p for p in problems)
    assert any("output 0 has shape ['s0', 7]" in p for p in problems)
    assert any("no operations" in p for p in problems)


class FakeMLModel:
    """Stands in for Core ML's predict (absent off macOS) to test what the runner does around it."""

    def __init__(self):
        self.fed = None

    def predict(self, feed):
        self.fed = feed
        ids = feed["ids"]
        return {"out": (ids * 2).astype(np.float32), "count": np.array([ids.shape[0]], dtype=np.float32)}


def _fake_runner():
    metadata = {"program": {"inputs": [{"name": "ids", "dtype": "int32", "shape": [2, 4], "ranges": [[1, 8], [4, 4]]}],
                            "outputs": [{"name": "out"}, {"name": "count"}], "op_count": 3},
                "output_dtypes": ["float32", "int64"]}
    model = FakeMLModel()
    return CoreMLRunner(model, metadata, device="ane", precision="fp16"), model


def test_runner_casts_inputs_and_outputs_and_checks_ranges():
    runner, model = _fake_runner()
    ids = np.random.default_rng().integers(1, 100, size=(3, 4), dtype=np.int64)
    out, count = runner.run([ids])
    assert model.fed["ids"].dtype == np.int32  # Core ML has no int64 inputs
    np.testing.assert_array_equal(out, ids * 2)
    assert count.dtype == np.int64 and count.tolist() == [3]  # cast back to the model's output dtype
    with pytest.raises(InputError, match="dimension 0 is 9, this Core ML program takes 1..8"):
        runner.run([np.ones((9, 4), dtype=np.int64)])
    assert runner.info["runtime"] == "Core ML" and runner.device == "ane" and not runner.thread_safe


def test_a_static_program_takes_only_its_shape():
    metadata = {"program": {"inputs": [{"name": "ids", "dtype": "int32", "shape": [2, 4], "ranges": []}],
                            "outputs": [{"name": "out"}, {"name": "count"}], "op_count": 3}}
    runner = CoreMLRunner(FakeMLModel(), metadata, device="cpu", precision="fp32")
    assert runner.run([np.ones((2, 4), dtype=np.int64)])[1].tolist() == [2]
    with pytest.raises(InputError, match="dimension 0 is 3, this Core ML program takes 2..2"):
        runner.run([np.ones((3, 4), dtype=np.int64)])
