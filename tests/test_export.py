"""``motorpool.export``: artifacts written where they cannot run, checked where they can.

A Core ML package is exported here for real (it cannot run on Linux); the load-side verification is
exercised with an export-only stand-in backend that becomes runnable, and with a runnable backend.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

import motorpool
from motorpool import (ArtifactError, Availability, Backend, BackendUnavailable, Capabilities, CompileOptions,
                       VerificationError)
from motorpool.backends.torchscript import TorchScriptRunner
from motorpool.engine.manifest import ARTIFACT_DIR, MANIFEST, read_manifest, sha256
from motorpool.plugin.registry import Registry, set_registry
from motorpool.testing.zoo import ZOO

COREML = motorpool.get_registry().get("coreml").availability()
exports_coreml_only = pytest.mark.skipif(not COREML.can_export or COREML.available,
                                         reason=COREML.reason or "coreml can run here")


def _stored(path: Path, rel: str) -> np.ndarray:
    return np.load(path / ARTIFACT_DIR / rel, allow_pickle=False)


@pytest.fixture(scope="module")
def coreml_export(tmp_path_factory):
    if not COREML.can_export or COREML.available:
        pytest.skip(COREML.reason or "coreml can run here")
    model, examples = ZOO["dict_out"].build(2)
    path = tmp_path_factory.mktemp("coreml") / "dict_out.coreml"
    assert motorpool.export(model, examples, backend="coreml", path=path, precision="fp16") == path
    return model, examples, path


def test_coreml_export_writes_a_complete_checksummed_directory(coreml_export):
    model, examples, path = coreml_export
    manifest = read_manifest(path)  # format and every checksum
    assert manifest["backend"] == "coreml" and manifest["precision"] == "fp16" and manifest["device"] == "all"
    assert (path / ARTIFACT_DIR / "model.mlpackage" / "Manifest.json").is_file()
    files = {p.relative_to(path / ARTIFACT_DIR).as_posix() for p in (path / ARTIFACT_DIR).rglob("*") if p.is_file()}
    assert files == set(manifest["checksums"])
    # what was checked without running: the program's interface, recorded
    program = manifest["backend_metadata"]["program"]
    assert [i["name"] for i in program["inputs"]] == ["x"] and len(program["outputs"]) == 4
    assert program["op_count"] > 0
    # the output structure comes back whole
    tree = pytree.treespec_loads(manifest["output_tree"])
    with torch.inference_mode():
        ref = model(*examples)
    assert tree == pytree.tree_flatten(ref)[1]
    assert manifest["input_spec"]["inputs"][0]["shape"] == ["batch", 12]
    # built here for another machine: no "other hardware" warning on the Mac, but where it was built is kept
    assert manifest["hardware"]["fingerprint"] is None and manifest["export"]["can_run_where_built"] is False


def test_coreml_export_stores_random_inputs_and_eager_outputs(coreml_export):
    model, examples, path = coreml_export
    verification = read_manifest(path)["verification"]
    assert verification["status"] == "pending_verification" and verification["precision"] == "fp16"
    checks = [c["check"] for c in verification["cases"]]
    assert checks[0] == "examples" and "random" in checks and "random batch=1" in checks
    for case in verification["cases"]:
        inputs = [torch.from_numpy(_stored(path, rel)) for rel in case["inputs"]]
        with torch.inference_mode():
            expected = pytree.tree_leaves(model(*inputs))
        assert len(expected) == len(case["outputs"])
        for rel, want in zip(case["outputs"], expected):
            np.testing.assert_allclose(_stored(path, rel), want.numpy(), rtol=1e-6, atol=1e-6)
        if case["check"] != "examples":
            assert all(np.count_nonzero(x.numpy()) == x.numel() for x in inputs), "never zeros"


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the package loads")
def test_loading_a_coreml_export_on_linux_raises_the_macos_reason(coreml_export):
    with pytest.raises(BackendUnavailable, match="Core ML runs models only on macOS"):
        motorpool.load(coreml_export[2])


def test_a_tampered_export_is_refused(coreml_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(coreml_export[2], copy)
    rel = read_manifest(copy)["verification"]["cases"][1]["outputs"][0]
    np.save(copy / ARTIFACT_DIR / rel, np.ones((2, 5), dtype=np.float32), allow_pickle=False)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        read_manifest(copy)


def test_a_backend_that_can_neither_run_nor_export_is_refused(tmp_path):
    av = motorpool.get_registry().get("tensorrt").availability()
    if av.available or av.can_export:
        pytest.skip("tensorrt can run here")
    model, examples = ZOO["mlp"].build(2)
    with pytest.raises(BackendUnavailable, match="can neither run nor export here"):
        motorpool.export(model, examples, backend="tensorrt", path=tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- the load side: a stand-in export-only backend that becomes runnable ------------------------------------

class ExportOnly(Backend):
    """TorchScript under another name, which can only export until ``runnable`` is set."""

    name = "export_only"
    capabilities = Capabilities(devices=("cpu",), precisions=frozenset({"fp32"}))
    runnable = False
    loads = 0

    def availability(self) -> Availability:
        if type(self).runnable:
            return Availability.ok(version="1", devices=["cpu"])
        return Availability.unsupported_platform("runs only on the target", can_export=True, version="1")

    def compile(self, model, example_inputs, options):
        raise AssertionError("export() must not compile")

    def export(self, model, example_inputs, options: CompileOptions, directory: Path) -> dict[str, Any]:
        torch.jit.save(torch.jit.trace(model, example_inputs), str(directory / "model.ts"))
        return {"file": "model.ts", "checked": "without running"}

    def load(self, directory, metadata, options):
        type(self).loads += 1
        return TorchScriptRunner(torch.jit.load(str(directory / metadata["file"])), device="cpu", precision="fp32")


@pytest.fixture
def export_only_registry():
    reg = Registry(autoload=False)
    reg.register(ExportOnly)
    previous = set_registry(reg)
    ExportOnly.runnable = False
    yield reg
    set_registry(previous)


def test_load_on_a_machine_that_can_run_it_verifies_the_stored_numerics(export_only_registry, tmp_path):
    model, examples = ZOO["two_inputs"].build(3)
    path = motorpool.export(model, examples, backend="export_only", path=tmp_path / "e")
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["verification"]["status"] == "pending_verification"
    assert manifest["backend_metadata"]["checked"] == "without running"
    with pytest.raises(BackendUnavailable, match="runs only on the target"):
        motorpool.load(path)
    ExportOnly.runnable = True  # "shipped to the target machine"
    engine = motorpool.load(path, trust_code=True)  # this test backend's artifact is TorchScript: code
    figures = engine.report.verification
    assert figures["status"] == "verified-on-load" and figures["passed"]
    assert [c["check"] for c in figures["checks"]] == [c["check"] for c in manifest["verification"]["cases"]]
    x, c = torch.randn(5, 16), torch.randn(5, 8)
    torch.testing.assert_close(engine(x, c), model(x, c))
    # every export draws fresh inputs
    ExportOnly.runnable = False
    again = motorpool.export(model, examples, backend="export_only", path=tmp_path / "again")
    rel = manifest["verification"]["cases"][1]["inputs"][0]
    assert not np.array_equal(_stored(path, rel), _stored(again, rel))


def test_load_refuses_an_engine_that_does_not_match_what_was_stored(export_only_registry, tmp_path):
    model, examples = ZOO["mlp"].build(2)
    path = motorpool.export(model, examples, backend="export_only", path=tmp_path / "e")
    manifest = json.loads((path / MANIFEST).read_text())
    # a target whose runtime computes something else: stored outputs that the artifact does not reproduce
    rel = manifest["verification"]["cases"][1]["outputs"][0]
    wrong = _stored(path, rel) + 0.5
    np.save(path / ARTIFACT_DIR / rel, wrong, allow_pickle=False)
    manifest["checksums"][rel] = sha256(path / ARTIFACT_DIR / rel)
    (path / MANIFEST).write_text(json.dumps(manifest))
    ExportOnly.runnable = True
    with pytest.raises(VerificationError, match="does not match the eager outputs stored at export") as info:
        motorpool.load(path, trust_code=True)
    assert info.value.figures["passed"] is False


# -- a backend that can run here: compiled, verified now, same layout --------------------------------------

def test_exporting_a_runnable_backend_verifies_now_and_loads(tmp_path):
    model, examples = ZOO["tuple_out"].build(2)
    path = motorpool.export(model, examples, backend="torchscript", path=tmp_path / "ts")
    manifest = read_manifest(path)
    verification = manifest["verification"]
    assert verification["status"] == "verified" and verification["passed"]
    assert verification["cases"] and manifest["hardware"]["fingerprint"]
    engine = motorpool.load(path, trust_code=True)  # TorchScript is code (SECURITY.md)
    assert engine.report.verification["status"] == "verified"  # nothing pending: not re-run
    x = torch.randn(4, 10)
    for got, want in zip(engine(x), model(x)):
        torch.testing.assert_close(got, want)
