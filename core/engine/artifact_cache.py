"""The on-disk cache of compiled engines: compile once, load every time after.

``motorpool.compile(..., cache=None)`` looks here before compiling and stores what it compiled. An entry
is a saved engine (the ordinary ``Engine.save`` layout: backend artifact, JSON manifest, checksums) in a
directory named by the hash of its key, plus ``key.json`` holding the key itself. The key is everything
that decides what a backend would build:

- the model: a hash of every parameter and buffer (names, dtypes, shapes, bytes) and of its code (each
  submodule's class and the source of its ``forward``, or a GraphModule's generated code) and structure;
- the input spec (names, shapes with named dynamic dimensions, dtypes), device, precision, options, and
  the calibration data (an iterator that can only be read once makes the call uncacheable);
- the backend's name, version and the versions of its runtimes; the hardware fingerprint; motorpool's,
  torch's and Python's versions.

Where it lives: ``engines/`` under ``$MOTORPOOL_CACHE`` or the user's cache directory (``platformdirs``),
created private to the user (0o700). ``MOTORPOOL_NO_CACHE=1`` turns the default off; ``cache=True`` or
``cache=False`` decides per call.

Safety: an entry appears whole or not at all (built in a temporary directory, renamed into place); two
processes compiling the same key both succeed and leave one valid entry (the second rename fails on the
existing directory and is dropped); an entry whose checksums, manifest or key do not match is discarded
with a warning and rebuilt; nothing is unpickled by motorpool (JSON manifests; the backend's own artifact
formats: TorchScript, ONNX, OpenVINO IR, torch.export). The one exception is asked for on purpose: a
torch_compile entry carries Inductor's kernels from ``torch.compiler.save_cache_artifacts``, which PyTorch
reads back with pickle; the manifest's checksums cover those bytes and the directory is the user's alone.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..plugin.errors import ArtifactError, MotorpoolError, UnsupportedError
from ..plugin.paths import CacheWarning, cache_root, private_dir, usable_cache_dir
from ..plugin.registry import get_registry
from .fingerprint import calibration_fingerprint, model_fingerprint
from .manifest import jsonable
from .saved import open_saved

if TYPE_CHECKING:
    import torch

    from ..plugin.contract import Availability, Backend
    from .engine import Engine
    from ..plugin.spec import InputSpec

ENV_OFF = "MOTORPOOL_NO_CACHE"
KEY_FILE = "key.json"
ENGINE_DIR = "engine"
KEY_VERSION = 2  # 2: the fingerprint covers plain attributes, hooks and every method forward may call
#: temporary directories older than this are left-overs of a killed process; ``prune`` removes them
STALE_TMP_S = 3600.0


def cache_dir(create: bool = True) -> Path:
    """Where engines are kept: ``<cache root>/engines`` (see :func:`motorpool.plugin.paths.cache_root`),
    created readable by the user only, 0o700."""
    return cache_root("engines", create=create)


def enabled(cache: bool | None) -> bool:
    """Whether a compile call uses the cache: ``cache`` if given, else on unless ``MOTORPOOL_NO_CACHE``."""
    if cache is not None:
        return bool(cache)
    return os.environ.get(ENV_OFF, "").strip().lower() not in {"1", "true", "yes", "on"}


def make_key(backend: "Backend", availability: "Availability", model: "torch.nn.Module", spec: "InputSpec", *,
             precision: str, options: dict[str, Any], calibration: Any = None) -> dict[str, Any] | None:
    """The cache key of one compile, as a JSON-able dict; None when this call cannot be cached."""
    import torch

    from .._version import __version__
    from ..plugin import hardware

    calib = calibration_fingerprint(calibration)
    if calib is None:
        return None
    return {
        "key_version": KEY_VERSION,
        "model": model_fingerprint(model),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "spec": spec.to_dict(),
        "precision": precision,
        "options": jsonable(options),
        "calibration": calib,
        "backend": backend.name,
        "backend_class": f"{type(backend).__module__}.{type(backend).__qualname__}",
        # the distribution that provides it and its code as it is now: a plugin's next version (or an
        # edited editable install) never loads what the previous code built
        "backend_provider": provider_identity(backend),
        "backend_version": availability.version,
        "backend_versions": jsonable(dict(availability.versions)),
        "hardware": hardware.fingerprint(),
        "motorpool": __version__,
        "torch": torch.__version__,
        "python": f"{sys.implementation.name}-{platform.python_version()}",
    }


def provider_identity(backend: "Backend") -> str:
    """``distribution==version`` of what provides ``backend``, and a hash of its module's source."""
    try:
        code = hashlib.sha256(Path(inspect.getfile(type(backend))).read_bytes()).hexdigest()[:16]
    except (OSError, TypeError):  # a class built at runtime has no file
        code = "no-source"
    return f"{get_registry().distribution(backend.name) or 'registered by hand'} source:{code}"


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


# -- entries --------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One key's place in the cache: load what is there, or store a freshly compiled engine."""

    key: dict[str, Any]
    root: Path

    @property
    def digest(self) -> str:
        return key_digest(self.key)

    @property
    def path(self) -> Path:
        return self.root / self.key["backend"] / self.digest

    def load(self) -> "Engine | None":
        """The cached engine, or None on a miss. A broken entry is discarded with a warning (a miss)."""
        path = self.path
        if not path.is_dir():
            return None
        try:
            stored = json.loads((path / KEY_FILE).read_text())
            if stored != self.key:
                raise ArtifactError(f"its {KEY_FILE} does not hold the key it is filed under")
            with warnings.catch_warnings():
                # the key already pins hardware and versions; load's own notes would only repeat that
                warnings.simplefilter("ignore")
                # motorpool wrote this entry into a directory private to this user: its code formats are ours
                engine = open_saved(path / ENGINE_DIR, strict=True, trust_code=True)
        except FileNotFoundError as exc:
            if not path.exists():  # removed between our look and our read (a concurrent clear): a miss
                return None
            self._discard(f"it is incomplete ({exc})")
            return None
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with an entry, it is rebuilt, never fatal
            self._discard(str(exc) if isinstance(exc, MotorpoolError) else f"{type(exc).__name__}: {exc}")
            return None
        _touch(path)
        engine.report.info["cache"] = {"hit": True, "path": str(path), "key": self.digest}
        return engine

    def store(self, engine: "Engine") -> Path | None:
        """Save ``engine`` under this key. Returns the entry's path, or None when it was not stored.

        An engine whose runner cannot be saved is simply not cached; losing a race to another process
        storing the same key is not an error (its entry is as good as ours).
        """
        path = self.path
        if path.exists():
            engine.report.info["cache"] = {"hit": False, "stored": False, "path": str(path),
                                           "reason": "another process stored this key first"}
            return None
        try:
            private_dir(self.root)
            private_dir(path.parent)
        except OSError as exc:
            warnings.warn(f"motorpool is not storing {path}: {exc}", CacheWarning, stacklevel=3)
            engine.report.info["cache"] = {"hit": False, "stored": False, "reason": str(exc)}
            return None
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(mode=0o700)
            engine.save(tmp / ENGINE_DIR)
            (tmp / KEY_FILE).write_text(json.dumps(self.key, indent=2, sort_keys=True))
            _fsync_tree(tmp)
            os.rename(tmp, path)  # atomic; fails when another process got there first
        except UnsupportedError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            engine.report.info["cache"] = {"hit": False, "stored": False, "reason": str(exc)}
            return None
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if path.is_dir():
                engine.report.info["cache"] = {"hit": False, "stored": False, "path": str(path),
                                               "reason": "another process stored this key first"}
                return None
            warnings.warn(f"motorpool could not write the cache entry {path}: {exc}", CacheWarning, stacklevel=3)
            engine.report.info["cache"] = {"hit": False, "stored": False, "reason": str(exc)}
            return None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        engine.report.info["cache"] = {"hit": False, "stored": True, "path": str(path), "key": self.digest}
        return path

    def discard(self, why: str) -> None:
        """Remove this entry with a :class:`CacheWarning` saying why (it is rebuilt by the next compile)."""
        self._discard(why)

    def _discard(self, why: str) -> None:
        warnings.warn(f"motorpool discarded the cache entry {self.path} and will rebuild it: {why}",
                      CacheWarning, stacklevel=4)
        remove_entry(self.path)


def entry_for(backend: "Backend", availability: "Availability", model: "torch.nn.Module", spec: "InputSpec", *,
              precision: str, options: dict[str, Any], calibration: Any = None,
              enabled_: bool | None = None) -> Entry | None:
    """The cache entry for one compile, or None when the cache is off or the call cannot be cached.

    Backends that compile nothing (``compile_cost == "none"``, e.g. eager) are not cached: loading their
    saved artifact would cost more than building them.
    """
    if not enabled(enabled_) or backend.capabilities.compile_cost == "none":
        return None
    if not backend.capabilities.serializable:
        return None
    key = make_key(backend, availability, model, spec, precision=precision, options=options,
                   calibration=calibration)
    if key is None:
        return None
    root = usable_cache_dir("engines", what="artifact cache", stacklevel=4)
    if root is None:
        return None
    return Entry(key, root)


def remove_entry(path: Path) -> None:
    """Take an entry out of the cache at once (rename), then delete it; concurrent readers see a miss."""
    path = Path(path)
    trash = path.parent / f".{path.name}.trash-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except OSError:
        return  # already gone
    shutil.rmtree(trash, ignore_errors=True)


def _touch(path: Path) -> None:
    try:
        os.utime(path)  # the entry's mtime is its last use: prune drops the least recently used first
    except OSError:
        pass


def _fsync_tree(root: Path) -> None:
    """Flush the entry's files before it is renamed into place, so a crash cannot leave a torn entry."""
    for p in root.rglob("*"):
        if p.is_file():
            try:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass


# -- listing and pruning (the ``motorpool cache`` command) ---------------------------------------------


@dataclass(frozen=True)
class EntryInfo:
    path: Path
    backend: str
    digest: str
    size_bytes: int
    last_used: float
    precision: str | None
    model_class: str | None
    valid: bool

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "backend": self.backend, "key": self.digest, "size_bytes": self.size_bytes,
                "last_used": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_used)),
                "precision": self.precision, "model_class": self.model_class, "valid": self.valid}


def _tree_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:  # removed by a concurrent clear or prune while we looked
            pass
    return total


def entries(root: Path | None = None) -> list[EntryInfo]:
    """Every entry in the cache, most recently used first (``valid`` is False when key.json is unreadable)."""
    root = cache_dir(create=False) if root is None else Path(root)
    out = []
    if not root.is_dir():
        return out
    for backend_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in backend_dir.iterdir():
            if not path.is_dir() or path.name.startswith("."):
                continue
            try:
                key = json.loads((path / KEY_FILE).read_text())
                valid = isinstance(key, dict)
            except (OSError, ValueError):
                key, valid = {}, False
            key = key if isinstance(key, dict) else {}
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            out.append(EntryInfo(path, backend_dir.name, path.name, _tree_size(path), mtime, key.get("precision"),
                                 key.get("model_class"), valid))
    return sorted(out, key=lambda e: -e.last_used)


def _leftovers(root: Path) -> Iterator[Path]:
    """Temporary and trash directories that a killed process left behind."""
    if not root.is_dir():
        return
    for backend_dir in root.iterdir():
        if backend_dir.is_dir() and not backend_dir.name.startswith("."):
            for p in backend_dir.iterdir():
                if p.name.startswith(".") and (".tmp-" in p.name or ".trash-" in p.name):
                    yield p


def clear(root: Path | None = None) -> int:
    """Remove every entry; returns how many. Entries being written by another process are left alone."""
    root = cache_dir(create=False) if root is None else Path(root)
    found = entries(root)
    for e in found:
        remove_entry(e.path)
    return len(found)


def prune(max_size_bytes: int | None = None, *, older_than_s: float | None = None,
          root: Path | None = None) -> list[EntryInfo]:
    """Drop least recently used entries until the cache holds at most ``max_size_bytes``; also entries unused
    for ``older_than_s``, invalid entries, and stale temporary directories. Returns the entries removed."""
    root = cache_dir(create=False) if root is None else Path(root)
    now = time.time()
    for p in list(_leftovers(root)):
        try:
            if now - p.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass
    found = entries(root)  # most recently used first
    removed, kept, total = [], [], 0
    for e in found:
        too_old = older_than_s is not None and now - e.last_used > older_than_s
        too_big = max_size_bytes is not None and total + e.size_bytes > max_size_bytes
        if not e.valid or too_old or too_big:
            removed.append(e)
        else:
            kept.append(e)
            total += e.size_bytes
    for e in removed:
        remove_entry(e.path)
    return removed


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """``"500M"``, ``"2GiB"``, ``"1024"`` -> bytes (binary units)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"size {text!r}: expected a number with an optional unit (K, M, G, T), e.g. 500M")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
