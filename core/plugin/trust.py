"""What a saved engine may make this process do (SECURITY.md): code detection, containment, allow-lists.

Helpers shared by the loader, the caches and the backends:

- :func:`pt2_code_reasons`: why a ``torch.export`` archive would run code if ``torch.export.load`` read it
  (pickled payloads, legacy pickled weights, custom objects, AOTInductor binaries), found by reading the
  archive's JSON payload configs and checking its sample inputs with the ``weights_only`` unpickler; nothing
  in the archive is executed;
- :func:`artifact_file` and :func:`check_artifact_tree`: every file a backend opens lies inside ``artifact/``,
  no symbolic links, so every file opened is one the checksums cover;
- :func:`allowed_options`: load options filtered by what a backend declares, the rest dropped with a warning;
- :func:`replace_directory`: swap a finished directory into place so the old one stays until the new one is
  whole.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import os
import re
import shutil
import stat
import uuid
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

from .errors import ArtifactError

TRUST_HINT = "trust_code=True"


class TrustWarning(UserWarning):
    """A saved engine asked for something the trust model does not allow; it was ignored."""


# -- code in a .pt2 ------------------------------------------------------------------------------------------


def torch_export_file_reasons(directory: str | Path, metadata: Mapping[str, Any], default: str) -> list[str]:
    """``Backend.code_in_artifact`` for backends whose artifact is one ``torch.export`` file (``metadata["file"]``)."""
    return pt2_code_reasons(artifact_file(directory, metadata.get("file", default)))


def pt2_code_reasons(path: str | Path) -> list[str]:
    """Why ``torch.export.load(path)`` would run code from the file; empty when it holds data only.

    ``torch.export.load`` unpickles with ``weights_only=False`` every payload its JSON configs flag
    ``use_pickle`` (tensor subclasses), every custom (``custom_obj_``) or opaque (``opaque_obj_``) constant,
    legacy ``weights/<model>.pt`` / ``constants/<model>.pt`` files, and the sample inputs when the
    ``weights_only`` unpickler refuses them; an ``aotinductor/`` directory holds native code. Each is named.
    """
    import torch

    path = Path(path)
    reasons: list[str] = []
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path} is not a torch.export archive (.pt2): {exc}") from exc
    with archive:
        names = archive.namelist()
        for name in names:
            parts = PurePosixPath(name).parts
            inner = "/".join(parts[1:])  # members sit under one root folder (the archive's name)
            if inner.startswith(("data/aotinductor/", "aotinductor/")) or "/aotinductor/" in name:
                reasons.append(f"it holds AOTInductor binaries ({name}): native code")
                break
        for name in names:
            inner = "/".join(PurePosixPath(name).parts[1:])
            if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt"):
                reasons.append(f"{name} is a legacy pickled payload, which torch.export.load unpickles")
            elif inner.startswith("data/constants/") and PurePosixPath(inner).name.startswith(
                    ("custom_obj_", "opaque_obj_")):
                reasons.append(f"{name} is a pickled custom object, which torch.export.load unpickles")
            elif inner.startswith(("data/weights/", "data/constants/")) and inner.endswith("_config.json"):
                try:
                    config = json.loads(archive.read(name))
                    entries = config["config"].items()
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    reasons.append(f"{name} is not a payload config torch.export.load could check ({exc})")
                    continue
                pickled = sorted(str(k) for k, v in entries if not isinstance(v, dict) or v.get("use_pickle"))
                if pickled:
                    reasons.append(f"{name} flags {', '.join(pickled[:5])}{' ...' if len(pickled) > 5 else ''} "
                                   "as pickled payloads, which torch.export.load unpickles with weights_only=False")
            elif inner.startswith("data/sample_inputs/"):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as exc:  # noqa: BLE001 - refused by the weights-only unpickler: code
                    reasons.append(f"{name} is a pickle that torch.load(weights_only=True) refuses "
                                   f"({_why_refused(exc)}); "
                                   "torch.export.load would retry it with weights_only=False")
    return [f"{path.name}: {r}" for r in reasons]


def _why_refused(exc: BaseException) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    named = [line for line in lines if "global" in line.lower()]
    return (named or lines or [type(exc).__name__])[0][:200]


# -- containment ---------------------------------------------------------------------------------------------


def artifact_file(directory: str | Path, name: Any, *, what: str = "file") -> Path:
    """``directory / name``, checked: ``name`` is a relative path that stays inside ``directory``.

    Raises :class:`ArtifactError` for anything else (absolute, ``..``, not a string, a symbolic link on
    the way). Backends open every file named in their metadata through this.
    """
    directory = Path(directory)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ArtifactError(f"{directory}: the manifest's {what} is {name!r}, expected a file name inside "
                            "artifact/")
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or os.path.isabs(name) or ".." in rel.parts:
        raise ArtifactError(f"{directory}: the manifest's {what} {name!r} does not lie inside artifact/; "
                            "every file of a saved engine must")
    path = directory.joinpath(*rel.parts)
    here = directory
    for part in rel.parts:
        here = here / part
        if here.is_symlink():
            raise ArtifactError(f"{directory}: artifact/{PurePosixPath(*rel.parts[:rel.parts.index(part) + 1])} "
                                "is a symbolic link; every file of a saved engine lies inside artifact/")
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        raise ArtifactError(f"{directory}: the manifest's {what} {name!r} does not lie inside artifact/") from None
    return path


def check_artifact_tree(root: str | Path) -> None:
    """Refuse symbolic links and special files anywhere under ``root`` (walked without following links)."""
    root = Path(root)
    if root.is_symlink():
        raise ArtifactError(f"{root} is a symbolic link; a saved engine's artifact/ must be a directory")
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            mode = p.lstat().st_mode
            rel = p.relative_to(root.parent).as_posix()
            if stat.S_ISLNK(mode):
                raise ArtifactError(f"{rel} is a symbolic link (to {os.readlink(p)}); every file of a saved "
                                    "engine lies inside artifact/")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArtifactError(f"{rel} is neither a file nor a directory")


# -- load options ------------------------------------------------------------------------------------------


def allowed_options(options: Any, allowed: Iterable[str], *, source: str, backend: str) -> dict[str, Any]:
    """The entries of ``options`` whose names are in ``allowed``; the others are dropped with a warning."""
    if not options:
        return {}
    if not isinstance(options, Mapping):
        warnings.warn(f"{source}: options {options!r} are not a mapping; ignored", TrustWarning, stacklevel=3)
        return {}
    allowed = set(allowed)
    kept = {k: v for k, v in options.items() if k in allowed}
    dropped = sorted(str(k) for k in options if k not in allowed)
    if dropped:
        warnings.warn(f"{source}: ignoring the load option(s) {', '.join(dropped)}: a saved engine cannot choose "
                      f"them ({backend} accepts {', '.join(sorted(allowed)) or 'none'} from a manifest); if you mean "
                      "them, pass them yourself: motorpool.load(path, options={...})", TrustWarning, stacklevel=3)
    return kept


# -- replacing a directory -----------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False where the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_directory(new: Path, path: Path) -> None:
    """Put the finished directory ``new`` at ``path``, replacing what is there.

    The old directory stays at ``path`` until the new one is in place: an atomic exchange where the system
    offers one; elsewhere the old one is moved aside and moved back if putting the new one in place fails.
    """
    new, path = Path(new), Path(path)
    if not path.exists():
        os.replace(new, path)
        return
    if _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now names the old directory
        return
    trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(trash, path)
        raise
    shutil.rmtree(trash, ignore_errors=True)
