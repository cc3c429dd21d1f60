"""The ``tensorrt`` backend: availability answers, shape ranges, block counting, precision settings.

torch-tensorrt needs an NVIDIA GPU; where it is absent the engine tests skip with the backend's own
availability reason, and what does not need the library is tested here for real.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types

import pytest
import torch

import motorpool
from motorpool import BackendUnavailable, CompileOptions, InputError, Status, UnsupportedError
from motorpool.backends import tensorrt as trt
from motorpool.plugin.spec import InputSpec
from motorpool.testing.zoo import ZOO

BACKEND = trt.TensorRTBackend()
AVAILABILITY = BACKEND.availability()
#: the testing kit's marker: skips with the backend's own availability reason
needs_tensorrt = pytest.mark.backend("tensorrt")


# -- availability: each way of not running, with its fix ---------------------------------------------------

class _BrokenTensorRT(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An installed torch_tensorrt whose import fails the way a missing libnvinfer does."""

    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "torch_tensorrt" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise OSError("libnvinfer.so.10: cannot open shared object file: No such file or directory")


def _installed(monkeypatch, module: types.ModuleType | None = None):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "torch_tensorrt":
            return importlib.util.spec_from_loader(name, loader=None)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    if module is not None:
        monkeypatch.setitem(sys.modules, "torch_tensorrt", module)


def test_not_installed_says_which_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "torch_tensorrt" else real(name, *a, **k))
    av = trt.tensorrt_availability()
    assert av.status is Status.NOT_INSTALLED and not av.can_export
    assert av.reason == "torch-tensorrt is not installed"
    assert av.fix == 'pip install "motorpool[tensorrt]"'


def test_no_cuda_device_says_so(monkeypatch):
    _installed(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    av = trt.tensorrt_availability()
    assert av.status is Status.NO_DEVICE
    assert "torch.cuda.is_available() is False" in av.reason and "needs an NVIDIA GPU with CUDA" in av.reason
    assert "CUDA build of torch" in av.fix and torch.__version__ in av.fix


def test_library_that_fails_to_load_gives_the_error_and_the_fix(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_BrokenTensorRT()] + sys.meta_path)
    monkeypatch.delitem(sys.modules, "torch_tensorrt", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    av = trt.tensorrt_availability()
    assert av.status is Status.IMPORT_FAILED
    assert "OSError: libnvinfer.so.10: cannot open shared object file" in av.reason
    assert "libnvinfer" in av.fix and 'pip install "motorpool[tensorrt]"' in av.fix


def test_available_lists_every_cuda_device_and_versions(monkeypatch):
    _installed(monkeypatch, types.SimpleNamespace(__version__="2.9.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    av = trt.tensorrt_availability()
    assert av.available and av.devices == ("cuda:0", "cuda:1")
    assert av.version == av.versions["torch_tensorrt"] == "2.9.0"


def test_compile_here_raises_the_backends_own_reason():
    if AVAILABILITY.available:
        pytest.skip("TensorRT is available here: the engine tests below cover it")
    model, examples = ZOO["mlp"].build(2)
    with pytest.raises(BackendUnavailable) as info:
        motorpool.compile(model, examples, backend="tensorrt")
    assert AVAILABILITY.reason in str(info.value)


def test_int8_without_calibration_is_unsupported():
    model, examples = ZOO["mlp"].build(2)
    spec = InputSpec.from_examples(examples)
    with pytest.raises(UnsupportedError, match="unsupported: needs calibration"):
        BACKEND.compile(model, examples, CompileOptions(device="cuda:0", precision="int8", spec=spec))


# -- shape ranges ----------------------------------------------------------------------------------------

def test_shape_ranges_from_the_spec():
    ids = torch.randint(1, 100, (1, 16))
    spec = InputSpec.from_examples((ids, torch.ones(1, 16, dtype=torch.int64)), names=["ids", "mask"],
                                   dynamic_dims={"ids": {1: "seq"}, "mask": {1: "seq"}})
    ranges = trt.dim_ranges(spec, {"max_sizes": {"seq": 128}})
    # opt is at least 2: torch.export specializes a size-1 example
    assert ranges == {"batch": (1, 2, 64), "seq": (1, 16, 128)}
    shapes = trt.input_shapes(spec, ranges)
    assert shapes[0] == {"name": "ids", "dtype": "int64", "min_shape": (1, 1), "opt_shape": (2, 16),
                         "max_shape": (64, 128)}
    assert shapes[1]["name"] == "mask" and shapes[1]["max_shape"] == (64, 128)


def test_static_inputs_have_one_shape():
    spec = InputSpec.from_examples((torch.randn(4, 3),), dynamic_batch=False)
    assert trt.dim_ranges(spec, {}) == {}
    assert trt.input_shapes(spec, {})[0]["min_shape"] == trt.input_shapes(spec, {})[0]["max_shape"] == (4, 3)


def test_shape_range_options_are_checked():
    spec = InputSpec.from_examples((torch.randn(8, 3),))
    with pytest.raises(InputError, match="not dynamic dimensions"):
        trt.dim_ranges(spec, {"max_sizes": {"seq": 4}})
    with pytest.raises(InputError, match=r"example's size \(8\) within \[min, max\]"):
        trt.dim_ranges(spec, {"max_sizes": {"batch": 4}})


def test_runner_rejects_sizes_outside_the_profile():
    spec = InputSpec.from_examples((torch.randn(2, 3),))
    shapes = trt.input_shapes(spec, trt.dim_ranges(spec, {"max_sizes": {"batch": 4}}))
    runner = trt.TensorRTRunner(torch.nn.Linear(3, 2).eval(), device="cpu", precision="fp32", shapes=shapes, info={})
    x = torch.randn(4, 3)
    (out,) = runner.run([x])
    assert out.shape == (4, 2)
    with pytest.raises(InputError, match="dimension 0 is 5; this TensorRT engine was built for 1..4"):
        runner.run([torch.randn(5, 3)])
    assert not runner.thread_safe


# -- blocks ------------------------------------------------------------------------------------------------

def _partitioned(*names: str) -> torch.nn.Module:
    module = torch.nn.Module()
    module.add_module("weights", torch.nn.Linear(2, 2))  # not a block
    for n in names:
        module.add_module(n, torch.nn.Identity())
    return module


def test_blocks_are_counted_by_their_submodule_names():
    blocks = trt.count_blocks(_partitioned("_run_on_acc_0", "_run_on_gpu_1", "_run_on_acc_2"))
    assert blocks == {"tensorrt_blocks": 2, "pytorch_blocks": 1,
                      "blocks": ["_run_on_acc_0", "_run_on_gpu_1", "_run_on_acc_2"]}
    assert trt.split_warning(blocks) is None


def test_a_model_split_into_many_blocks_is_reported():
    blocks = trt.count_blocks(_partitioned(*[f"_run_on_{'acc' if i % 2 == 0 else 'gpu'}_{i}" for i in range(5)]))
    assert (blocks["tensorrt_blocks"], blocks["pytorch_blocks"]) == (3, 2)
    warning = trt.split_warning(blocks)
    assert "5 blocks (3 TensorRT, 2 PyTorch)" in warning and "slower than eager" in warning


# -- precision settings -------------------------------------------------------------------------------------

WEAKLY_TYPED = {"enabled_precisions", "use_explicit_typing", "disable_tf32", "workspace_size"}  # <= 2.9
STRONGLY_TYPED = {"enable_autocast", "autocast_low_precision_type", "disable_tf32", "workspace_size"}  # later


def test_fp32_keeps_tf32_off_in_both_api_generations():
    assert trt.precision_settings("fp32", WEAKLY_TYPED) == {
        "disable_tf32": True, "enabled_precisions": {torch.float32}, "use_explicit_typing": False}
    assert trt.precision_settings("fp32", STRONGLY_TYPED) == {"disable_tf32": True}


def test_fp16_and_bf16_enable_the_lower_precision():
    assert trt.precision_settings("fp16", WEAKLY_TYPED)["enabled_precisions"] == {torch.float32, torch.float16}
    assert trt.precision_settings("bf16", STRONGLY_TYPED) == {"enable_autocast": True,
                                                              "autocast_low_precision_type": torch.bfloat16}
    with pytest.raises(UnsupportedError):
        trt.precision_settings("fp16", {"disable_tf32"})


# -- on a machine with TensorRT ------------------------------------------------------------------------------

@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_compile_verify_save_load(precision, tmp_path):
    model, examples = ZOO["cnn"].build(2)
    engine = motorpool.compile(model, examples, backend="tensorrt", device="cuda", precision=precision,
                               options={"min_block_size": 1})
    info = engine.report.info
    assert info["tensorrt_blocks"] >= 1 and engine.report.verification["passed"]
    if precision == "fp32":
        assert info["settings"]["disable_tf32"] is True
    engine.save(tmp_path / "e")
    loaded = motorpool.load(tmp_path / "e")
    x = torch.randn(3, 3, 32, 32, device="cuda")
    torch.testing.assert_close(loaded(x), engine(x), rtol=1e-3, atol=1e-3)
    assert loaded.report.info["tensorrt_blocks"] == info["tensorrt_blocks"]
