"""Export a saved engine to an NVIDIA Triton model repository.

    >>> motorpool.export_triton("my-engine", "repo", name="resnet", max_batch_size=16)
    PosixPath('repo/resnet')

writes ``repo/resnet/config.pbtxt`` and ``repo/resnet/1/<model file>`` in the layout the Triton backend for
the engine's artifact expects:

============  ==============================  =====================  ==================================
engine        Triton backend                  model file             tensor names
============  ==============================  =====================  ==================================
onnxruntime   platform ``onnxruntime_onnx``   ``model.onnx``         the ONNX graph's
openvino      backend ``openvino``            ``model.xml``+``.bin`` the IR's
torchscript   platform ``pytorch_libtorch``   ``model.pt``           ``INPUT__0``..., ``OUTPUT__0``...
============  ==============================  =====================  ==================================

Datatypes and dims come from the engine's input spec and one probe of its outputs: a dynamic batch becomes
``max_batch_size`` (dims without the batch), other dynamic dimensions -1. ``dynamic_batching`` and
``instance_group`` (``KIND_CPU``/``KIND_GPU``, from the engine's device unless told) come from the arguments.
Engines whose artifact no Triton backend loads (eager and torch_compile save a ``torch.export`` program,
TensorRT a Torch-TensorRT program rather than a bare plan) raise :class:`motorpool.UnsupportedError` naming the
backends that export.

The config is written as text with no dependency; the tests parse it with Triton's own protobuf
(``tritonclient.grpc.model_config_pb2``).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..plugin.errors import ArtifactError, UnsupportedError
from . import oip
from .loading import open_engine

#: the protocol datatype -> Triton's model-config data type
TRITON_TYPES = {dt: f"TYPE_{dt}" for dt in oip.DATATYPES.values()}

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class _Layout:
    key: str              # "platform" or "backend"
    value: str            # e.g. "onnxruntime_onnx"
    copy: Callable[[Path, dict, Path], list[str]]        # (artifact dir, backend metadata, version dir) -> files
    names: Callable[[Path, int, int], tuple[list[str], list[str]]]  # (version dir, n_in, n_out) -> names


def _copy_onnx(artifact: Path, metadata: dict, dest: Path) -> list[str]:
    main = metadata.get("file", "model.onnx")
    files = []
    for f in sorted(artifact.iterdir()):  # model.onnx and, over 2 GB, its external data beside it
        if f.is_file():
            target = "model.onnx" if f.name == main else f.name
            shutil.copy2(f, dest / target)
            files.append(target)
    return files


def _onnx_names(dest: Path, n_in: int, n_out: int) -> tuple[list[str], list[str]]:
    import onnx

    graph = onnx.load(str(dest / "model.onnx"), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]


def _copy_openvino(artifact: Path, metadata: dict, dest: Path) -> list[str]:
    shutil.copy2(artifact / metadata.get("xml", "model.xml"), dest / "model.xml")
    shutil.copy2(artifact / metadata.get("bin", "model.bin"), dest / "model.bin")
    return ["model.xml", "model.bin"]


def _openvino_names(dest: Path, n_in: int, n_out: int) -> tuple[list[str], list[str]]:
    import openvino as ov

    model = ov.Core().read_model(str(dest / "model.xml"))
    return [p.get_any_name() for p in model.inputs], [p.get_any_name() for p in model.outputs]


def _copy_torchscript(artifact: Path, metadata: dict, dest: Path) -> list[str]:
    shutil.copy2(artifact / metadata.get("file", "model.ts"), dest / "model.pt")
    return ["model.pt"]


def _libtorch_names(dest: Path, n_in: int, n_out: int) -> tuple[list[str], list[str]]:
    # the PyTorch backend binds tensors by position through the <name>__<index> convention
    return [f"INPUT__{i}" for i in range(n_in)], [f"OUTPUT__{i}" for i in range(n_out)]


LAYOUTS: dict[str, _Layout] = {
    "onnxruntime": _Layout("platform", "onnxruntime_onnx", _copy_onnx, _onnx_names),
    "openvino": _Layout("backend", "openvino", _copy_openvino, _openvino_names),
    "torchscript": _Layout("platform", "pytorch_libtorch", _copy_torchscript, _libtorch_names),
}

#: why the other built-in engines' artifacts have no Triton layout
_WHY_NOT = {
    "eager": "it saves a torch.export program (.pt2), which no Triton backend loads (Triton's PyTorch "
             "backend runs TorchScript; an AOTInductor package would need compiling for the server's GPU)",
    "torch_compile": "it saves a torch.export program (.pt2) and recompiles on load; no Triton backend loads that",
    "tensorrt": "it saves a Torch-TensorRT exported program (model.ep), not a bare TensorRT plan; Triton's "
                "tensorrt_plan backend needs a plan built on the server's GPU (trtexec --onnx=model.onnx "
                "--saveEngine=model.plan from an onnxruntime engine's model.onnx)",
    "coreml": "Core ML runs on Apple platforms only; Triton has no Core ML backend",
}


def _quote(text: str) -> str:
    return json.dumps(text)  # protobuf text format takes C-style escapes, a subset of JSON's


def _tensor_block(entries: Sequence[tuple[str, str, list[int]]]) -> str:
    items = []
    for name, dtype, dims in entries:
        lines = [f"    name: {_quote(name)}", f"    data_type: {TRITON_TYPES[dtype]}"]
        if dims:
            lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
        else:  # a tensor that is only the batch: Triton wants one dim, reshaped away
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        items.append("  {\n" + "\n".join(lines) + "\n  }")
    return "[\n" + ",\n".join(items) + "\n]"


def config_text(*, name: str, layout: _Layout, inputs, outputs, max_batch_size: int,
                preferred_batch_sizes: Sequence[int] | None, max_queue_delay_us: int | None,
                instance_kind: str, instance_count: int, dynamic_batching: bool) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``inference.ModelConfig``)."""
    parts = [f"name: {_quote(name)}", f"{layout.key}: {_quote(layout.value)}", f"max_batch_size: {max_batch_size}",
             f"input {_tensor_block(inputs)}", f"output {_tensor_block(outputs)}"]
    if dynamic_batching and max_batch_size > 0:
        block = []
        if preferred_batch_sizes:
            block.append(f"  preferred_batch_size: [ {', '.join(str(int(b)) for b in preferred_batch_sizes)} ]")
        if max_queue_delay_us is not None:
            block.append(f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}")
        parts.append("dynamic_batching {\n" + "\n".join(block) + ("\n" if block else "") + "}")
    parts.append(f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {instance_kind}\n  }}\n]")
    return "\n".join(parts) + "\n"


def _instance_kind(kind: str | None, device: str) -> str:
    if kind is None:
        return "KIND_GPU" if device.split(":")[0] == "cuda" else "KIND_CPU"
    k = kind.upper().removeprefix("KIND_")
    if k not in ("CPU", "GPU"):
        raise ValueError(f"instance_kind: expected 'cpu', 'gpu', 'KIND_CPU' or 'KIND_GPU', got {kind!r}")
    return "KIND_" + k


def export_triton(engine_or_path: Any, repo: str | Path, name: str | None = None, version: int = 1, *,
                  max_batch_size: int = 8, preferred_batch_sizes: Sequence[int] | None = None,
                  max_queue_delay_us: int | None = 2000, instance_kind: str | None = None,
                  instance_count: int = 1, dynamic_batching: bool = True, overwrite: bool = False) -> Path:
    """Write ``repo/name/config.pbtxt`` and ``repo/name/version/<model file>`` for a saved engine (a directory
    ``Engine.save`` wrote, or an Engine, saved to a temporary directory first). Returns ``repo/name``.

    ``max_batch_size`` applies to an engine with a dynamic batch (Triton batches along a dimension 0 it does not
    list in ``dims``); an engine with a static batch gets ``max_batch_size: 0`` and its full shapes.
    ``name`` defaults to the engine folder's name. An existing version directory is only replaced with
    ``overwrite=True``; other versions already in ``repo/name`` are kept.
    """
    if isinstance(engine_or_path, (str, Path)):
        return _export_dir(Path(engine_or_path), Path(repo), name or Path(engine_or_path).resolve().name, version,
                           max_batch_size=max_batch_size, preferred_batch_sizes=preferred_batch_sizes,
                           max_queue_delay_us=max_queue_delay_us, instance_kind=instance_kind,
                           instance_count=instance_count, dynamic_batching=dynamic_batching, overwrite=overwrite)
    if not hasattr(engine_or_path, "save") or not hasattr(engine_or_path, "input_spec"):
        raise TypeError(f"export_triton: expected a motorpool Engine or a saved engine directory, got "
                        f"{type(engine_or_path).__name__}")
    _check_backend(engine_or_path.backend)
    with tempfile.TemporaryDirectory(prefix="motorpool-triton-") as tmp:
        saved = engine_or_path.save(Path(tmp) / "engine")
        return _export_dir(saved, Path(repo), name or "model", version, max_batch_size=max_batch_size,
                           preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
                           instance_kind=instance_kind, instance_count=instance_count,
                           dynamic_batching=dynamic_batching, overwrite=overwrite)


def _check_backend(backend: str) -> _Layout:
    layout = LAYOUTS.get(backend)
    if layout is None:
        why = _WHY_NOT.get(backend, "no Triton backend layout is known for its artifact")
        raise UnsupportedError(
            f"cannot export a {backend} engine to a Triton model repository: {why}. Engines that export: "
            f"{', '.join(LAYOUTS)} (compile with backend=... one of them)", backend=backend)
    return layout


def _export_dir(path: Path, repo: Path, name: str, version: int, *, max_batch_size: int,
                preferred_batch_sizes, max_queue_delay_us, instance_kind, instance_count, dynamic_batching,
                overwrite: bool) -> Path:
    if not _NAME.match(name):
        raise ValueError(f"name: a Triton model name is a folder name of letters, digits, '_', '.', '-'; "
                         f"got {name!r}")
    for label, value in (("version", version), ("max_batch_size", max_batch_size),
                         ("instance_count", instance_count)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if label == "max_batch_size" else 1):
            raise ValueError(f"{label}: expected a positive int, got {value!r}")
    if preferred_batch_sizes and any(not 1 <= int(b) <= max_batch_size for b in preferred_batch_sizes):
        raise ValueError(f"preferred_batch_sizes {list(preferred_batch_sizes)} must lie within 1..max_batch_size "
                         f"({max_batch_size})")
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not a saved engine (no manifest.json); write one with "
                                      "`motorpool compile` or Engine.save")
    manifest = json.loads(manifest_path.read_text())
    layout = _check_backend(manifest["backend"])
    # checks the checksums, and gives the output datatypes and shapes. Opened trusted: the repository is written
    # for Triton to run this very artifact, TorchScript included
    engine = open_engine(path, trust_code=True)
    meta = oip.describe_engine(engine, name)
    batched = meta.batched and max_batch_size > 0
    kind = _instance_kind(instance_kind, manifest.get("device", "cpu"))

    model_dir = repo / name
    version_dir = model_dir / str(version)
    if version_dir.exists() and not overwrite:
        raise ArtifactError(f"{version_dir} already exists; pass overwrite=True to replace it")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=_ensure(model_dir)))
    try:
        layout.copy(path / "artifact", manifest.get("backend_metadata", {}), staging)
        in_names, out_names = layout.names(staging, len(meta.inputs), len(meta.outputs))
        if len(in_names) != len(meta.inputs) or len(out_names) != len(meta.outputs):
            raise ArtifactError(
                f"{path}: the model file has {len(in_names)} inputs and {len(out_names)} outputs but the engine "
                f"{len(meta.inputs)} and {len(meta.outputs)}")

        def dims(shape):
            return list(shape[1:] if batched else shape)

        text = config_text(
            name=name, layout=layout, max_batch_size=max_batch_size if batched else 0,
            inputs=[(n, t.datatype, dims(t.shape)) for n, t in zip(in_names, meta.inputs)],
            outputs=[(n, t.datatype, dims(t.shape)) for n, t in zip(out_names, meta.outputs)],
            preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
            instance_kind=kind, instance_count=instance_count, dynamic_batching=dynamic_batching)
        if version_dir.exists():
            shutil.rmtree(version_dir)
        staging.rename(version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


def _ensure(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


__all__ = ["export_triton", "config_text", "LAYOUTS", "TRITON_TYPES"]
