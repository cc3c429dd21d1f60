"""The JSON manifest written beside every saved artifact, and the checksums that guard it."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ..plugin.errors import ArtifactError
from ..plugin.trust import check_artifact_tree, replace_directory

FORMAT = "motorpool-engine"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARTIFACT_DIR = "artifact"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def runtime_versions() -> dict[str, str]:
    import numpy
    import torch

    from .._version import __version__

    return {"motorpool": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def build_manifest(*, backend: str, backend_version: str | None, versions: dict[str, str], device: str,
                   precision: str, input_spec: dict[str, Any], output_tree: str, hardware: dict[str, Any],
                   verification: dict[str, Any] | None, compile_time_s: float | None, options: dict[str, Any],
                   backend_metadata: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The one shape of ``manifest.json`` (``Engine.save`` and ``motorpool.export`` both write it); the
    checksums are added by :func:`write_manifest`."""
    return {
        "backend": backend, "backend_version": backend_version, "versions": versions, "device": device,
        "precision": precision, "input_spec": input_spec, "output_tree": output_tree, "hardware": hardware,
        "verification": verification, "compile_time_s": compile_time_s, "options": jsonable(options),
        "backend_metadata": backend_metadata, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def write_atomically(path: Path, fill, *, overwrite: bool = False) -> None:
    """Build a directory with ``fill(tmpdir)`` next to ``path``, then rename it into place.

    A failure leaves no half-written directory behind; an existing non-empty ``path`` is only replaced with
    ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise ArtifactError(f"{path} already exists and is not empty; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        # the old engine stays at ``path`` until the new one is whole and in place (an atomic exchange)
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION,
                    checksums=checksums(directory / ARTIFACT_DIR))
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))


def read_manifest(directory: Path, *, check: bool = True) -> dict[str, Any]:
    """Read and check a saved engine's manifest: format, and every artifact file's checksum."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{directory} is not a saved motorpool engine: no {MANIFEST} in it")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{mpath} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{mpath}: manifest format {manifest['format_version']} is newer than this "
                            f"motorpool understands ({FORMAT_VERSION}); upgrade motorpool")
    check_manifest_types(manifest, mpath)
    if check:
        verify_checksums(directory, manifest)
    return manifest


#: the fields every loader reads, and the JSON types they must have
_FIELDS = {"backend": str, "precision": str, "input_spec": dict, "output_tree": str, "checksums": dict}
_OPTIONAL = {"device": str, "options": dict, "backend_metadata": dict, "versions": dict, "hardware": dict,
             "verification": (dict, type(None)), "backend_version": (str, type(None)), "gate": (dict, type(None))}


def check_manifest_types(manifest: Any, mpath: Path) -> None:
    """Raise :class:`ArtifactError` naming the first field whose JSON type is not what loaders expect."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: the manifest is a JSON {type(manifest).__name__}, expected an object")

    def bad(field: str, value: Any, expected: str) -> ArtifactError:
        return ArtifactError(f"{mpath}: manifest field {field!r} is {type(value).__name__} {str(value)[:80]!r}, "
                             f"expected {expected}; the file is corrupt or was not written by motorpool")

    for field, kind in _FIELDS.items():
        if not isinstance(manifest.get(field), kind):
            raise bad(field, manifest.get(field), kind.__name__)
    for field, kind in _OPTIONAL.items():
        if field in manifest and not isinstance(manifest[field], kind):
            raise bad(field, manifest[field], " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple)
                                                                                   else (kind,))))
    spec = manifest["input_spec"]
    inputs = spec.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("input_spec.inputs", inputs, "a non-empty list of inputs")
    for i, t in enumerate(inputs):
        if not (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
                and isinstance(t.get("shape"), list)
                and all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in t["shape"])):
            raise bad(f"input_spec.inputs[{i}]", t, "{name: str, dtype: str, shape: [int | str]}")
    if not isinstance(spec.get("example_sizes", {}), dict) or not isinstance(spec.get("device", "cpu"), str):
        raise bad("input_spec", spec, "{inputs, device: str, example_sizes: {name: int}}")
    for name, digest in manifest["checksums"].items():
        if not isinstance(digest, str):
            raise bad(f"checksums[{name!r}]", digest, "a hex SHA-256")


def verify_checksums(directory: Path, manifest: dict[str, Any]) -> None:
    root = Path(directory) / ARTIFACT_DIR
    expected: dict[str, str] = manifest.get("checksums", {})
    if not expected:
        raise ArtifactError(f"{directory}: the manifest lists no checksums")
    if root.is_dir() or root.is_symlink():
        check_artifact_tree(root)  # no symbolic links: every file a backend opens is one listed here
    actual = checksums(root) if root.is_dir() else {}
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    if missing or changed:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if changed:
            parts.append(f"checksum mismatch in {changed}")
        raise ArtifactError(f"{directory}: artifact is corrupt or was modified: {'; '.join(parts)}")
    if extra:
        raise ArtifactError(f"{directory}: artifact holds files the manifest does not list: {extra}")


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON (keys sorted, so equal options give equal text); anything else as its repr."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
