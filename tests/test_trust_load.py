"""Loading is safe by default (issue 13): nothing in a saved engine runs code unless the caller opts in.

Each test crafts what an attacker who can write a saved-engine directory would write (and re-seals the
manifest's checksums, which only guard against accidents, not against whoever wrote the directory), then
checks that ``motorpool.load`` refuses it before anything of theirs runs, with a message naming the file,
why, and the opt-in.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch

import motorpool


def _available(name: str) -> bool:
    return any(b.name == name and b.available for b in motorpool.list_backends())


def _skip_unless(name: str, extra: str):
    return pytest.mark.skipif(not _available(name), reason=f"{name} is not available here "
                                                          f'(pip install "motorpool[{extra}]")')


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.lin(x))


def _save(backend: str, path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = Tiny().eval()
    engine = motorpool.compile(model, (torch.randn(2, 4),), backend=backend, cache=False)
    engine.save(path)
    return model, path


def reseal(path: Path, edit=None) -> dict:
    """Recompute the manifest's checksums over ``artifact/`` (as an attacker would), applying ``edit`` first."""
    mpath = path / "manifest.json"
    manifest = json.loads(mpath.read_text())
    if edit is not None:
        edit(manifest)
    art = path / "artifact"
    manifest["checksums"] = {p.relative_to(art).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                             for p in sorted(art.rglob("*")) if p.is_file() and not p.is_symlink()}
    mpath.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


class Evil:
    """Unpickling it creates ``marker``: proof that a payload ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_zip(pt2: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(pt2) as z:
        members = [(info, z.read(info.filename)) for info in z.infolist()]
    names = {info.filename for info, _ in members}
    missing = set(replace) - names
    assert not missing, f"{pt2} has no members {missing}; it has {sorted(names)}"
    with zipfile.ZipFile(pt2, "w", zipfile.ZIP_STORED) as z:
        for info, data in members:
            z.writestr(info, replace.get(info.filename, data))


def _member(pt2: Path, suffix: str) -> str:
    with zipfile.ZipFile(pt2) as z:
        found = [n for n in z.namelist() if n.endswith(suffix)]
    assert found, f"no member ending in {suffix} in {pt2}"
    return found[0]


def _pickled(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# -- .pt2 with pickled payloads ------------------------------------------------------------------------------


def test_pt2_whose_weight_is_flagged_pickled_runs_nothing_and_is_refused(tmp_path):
    _, path = _save("eager", tmp_path / "engine")
    pt2 = path / "artifact" / "model.pt2"
    marker = tmp_path / "pwned-weight"
    config_name = _member(pt2, "data/weights/model_weights_config.json")
    with zipfile.ZipFile(pt2) as z:
        config = json.loads(z.read(config_name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    weight_name = config_name.rsplit("/", 1)[0] + "/" + config["config"][first]["path_name"]
    _rewrite_zip(pt2, {config_name: json.dumps(config).encode(), weight_name: _pickled(Evil(str(marker)))})
    reseal(path)

    with pytest.raises(motorpool.ArtifactError) as info:
        motorpool.load(path)
    assert not marker.exists(), "loading the .pt2 ran the pickled payload"
    message = str(info.value)
    assert "model.pt2" in message and "pickle" in message.lower() and "trust_code=True" in message, message


def test_pt2_whose_sample_inputs_are_not_weights_only_runs_nothing_and_is_refused(tmp_path):
    # torch.export.load reads the sample inputs with weights_only=True and falls back to weights_only=False
    _, path = _save("eager", tmp_path / "engine")
    pt2 = path / "artifact" / "model.pt2"
    marker = tmp_path / "pwned-sample"
    _rewrite_zip(pt2, {_member(pt2, "data/sample_inputs/model.pt"): _pickled(Evil(str(marker)))})
    reseal(path)

    with pytest.raises(motorpool.ArtifactError) as info:
        motorpool.load(path)
    assert not marker.exists(), "loading the .pt2 ran the pickled sample inputs"
    assert "model.pt2" in str(info.value) and "trust_code=True" in str(info.value)


def test_plain_pt2_is_data_and_loads_without_opt_in(tmp_path):
    model, path = _save("eager", tmp_path / "engine")
    engine = motorpool.load(path)
    x = torch.randn(5, 4)
    torch.testing.assert_close(engine(x), model(x))


# -- TorchScript is code -------------------------------------------------------------------------------------


class _WritesOnLoad(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` writes a file through ``aten::from_file``."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.w = torch.randn(4, 3)

    def forward(self, x):
        return (x @ self.w,)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
        return (self.marker, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:
        self.marker = state[0]
        self.w = state[1]
        self.training = state[2]
        written = torch.from_file(state[0], shared=True, size=8, dtype=torch.uint8)
        written.fill_(65)


def test_torchscript_archive_is_code_refused_without_opt_in(tmp_path):
    _, path = _save("torchscript", tmp_path / "engine")
    marker = tmp_path / "pwned-ts"
    torch.jit.save(torch.jit.script(_WritesOnLoad(str(marker))), str(path / "artifact" / "model.ts"))
    assert not marker.exists()
    reseal(path)

    with pytest.raises(motorpool.ArtifactError) as info:
        motorpool.load(path)
    assert not marker.exists(), "the TorchScript archive's __setstate__ ran during load"
    message = str(info.value)
    assert "model.ts" in message and "TorchScript" in message and "trust_code=True" in message, message


def test_torchscript_loads_with_trust_code(tmp_path):
    model, path = _save("torchscript", tmp_path / "engine")
    engine = motorpool.load(path, trust_code=True)
    x = torch.randn(3, 4)
    torch.testing.assert_close(engine(x), model(x))


def test_torchscript_in_motorpools_private_cache_is_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("MOTORPOOL_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = Tiny().eval()
    first = motorpool.compile(model, (torch.randn(2, 4),), backend="torchscript", cache=True)
    assert first.report.info["cache"]["stored"] is True
    second = motorpool.compile(model, (torch.randn(2, 4),), backend="torchscript", cache=True)
    assert second.report.info["cache"]["hit"] is True
    x = torch.randn(3, 4)
    torch.testing.assert_close(second(x), model(x))


# -- every file a backend opens lies inside artifact/ --------------------------------------------------------


def _foreign_onnx(tmp_path: Path) -> Path:
    """An ONNX file of another model (computing -relu), outside any saved engine."""
    torch.manual_seed(1)
    other = motorpool.compile(Tiny().eval(), (torch.randn(2, 4),), backend="onnxruntime", cache=False)
    other.save(tmp_path / "other")
    return tmp_path / "other" / "artifact" / "model.onnx"


@_skip_unless("onnxruntime", "onnxruntime")
@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlinked-dir"])
def test_manifest_paths_cannot_leave_the_artifact(tmp_path, how):
    model, path = _save("onnxruntime", tmp_path / "engine")
    foreign = _foreign_onnx(tmp_path)
    art = path / "artifact"
    if how == "absolute":
        name = str(foreign)
    elif how == "dotdot":
        name = os.path.relpath(foreign, art)
        assert name.startswith("..")
    else:
        os.symlink(foreign.parent, art / "sub")
        name = "sub/model.onnx"

    def point(manifest):
        manifest["backend_metadata"]["file"] = name

    reseal(path, point)
    with pytest.raises(motorpool.ArtifactError) as info:
        motorpool.load(path)
    message = str(info.value)
    assert "artifact/" in message and ("symbolic link" in message or "inside" in message), message


# -- load options come from an allow-list --------------------------------------------------------------------


@_skip_unless("openvino", "openvino")
@pytest.mark.parametrize("where", ["options", "backend_metadata"])
def test_manifest_cannot_choose_where_openvino_writes(tmp_path, where):
    _, path = _save("openvino", tmp_path / "engine")
    chosen = tmp_path / "attacker-chosen"

    def steer(manifest):
        if where == "options":
            manifest["options"]["cache_dir"] = str(chosen)
        else:
            manifest["backend_metadata"].setdefault("config", {})["CACHE_DIR"] = str(chosen)

    reseal(path, steer)
    if where == "options":  # a compile-only option (declared, not Option.load): kept as a record, never passed
        engine = motorpool.load(path)
    else:  # a property the artifact has no business setting: dropped with a warning naming it
        with pytest.warns(UserWarning, match="CACHE_DIR"):
            engine = motorpool.load(path)
    x = np.random.default_rng().standard_normal((2, 4), dtype=np.float32)
    engine(x)
    assert not chosen.exists() or not any(chosen.iterdir()), f"OpenVINO wrote into {chosen}"


@_skip_unless("onnxruntime", "onnxruntime")
def test_manifest_cannot_pass_provider_options_to_onnxruntime(tmp_path):
    _, path = _save("onnxruntime", tmp_path / "engine")

    def steer(manifest):
        manifest["backend_metadata"]["session"]["providers"] = [
            ["CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}]]

    reseal(path, steer)
    with pytest.warns(UserWarning, match="provider"):
        engine = motorpool.load(path)
    options = engine.runner.session.get_provider_options().get("CPUExecutionProvider", {})
    assert "arena_extend_strategy" not in options or options["arena_extend_strategy"] != "kSameAsRequested", options


def test_unknown_manifest_options_are_ignored_with_a_warning(tmp_path):
    model, path = _save("onnxruntime" if _available("onnxruntime") else "eager", tmp_path / "engine")

    def steer(manifest):
        manifest["options"]["custom_op_library"] = "/tmp/libevil.so"

    reseal(path, steer)
    with pytest.warns(UserWarning, match="custom_op_library"):
        engine = motorpool.load(path)
    assert "custom_op_library" not in engine.options
    x = torch.randn(2, 4)
    torch.testing.assert_close(engine(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("member", ["model/data/aotinductor/model/model.so", "model/data/weights/model.pt",
                                    "model/data/constants/custom_obj_0", "model/data/constants/opaque_obj_0"])
def test_other_code_in_a_pt2_is_found_without_loading_it(tmp_path, member):
    from motorpool.plugin import pt2_code_reasons

    _, path = _save("eager", tmp_path / "engine")
    pt2 = path / "artifact" / "model.pt2"
    assert pt2_code_reasons(pt2) == []
    with zipfile.ZipFile(pt2, "a") as z:
        z.writestr(member, _pickled(Evil(str(tmp_path / "never"))))
    reasons = pt2_code_reasons(pt2)
    assert reasons and any(member in r for r in reasons), reasons
    assert not (tmp_path / "never").exists()
    reseal(path)
    with pytest.raises(motorpool.ArtifactError, match="trust_code=True"):
        motorpool.load(path)
