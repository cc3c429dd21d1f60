"""The decision cache: what ``backend="fastest"`` measured, kept on disk so the next ``auto`` uses it.

One JSON file per decision under ``$MOTORPOOL_CACHE/decisions`` (default: the user cache directory from
platformdirs). A decision is found by a key built from the model's fingerprint (its class, structure and
weights), the input spec (names, shapes, dtypes, example sizes), the precision, the device asked for, the
objective, this machine's hardware fingerprint and the process's thread count. It stays valid only while every backend it measured
reports the same versions as when it was measured: upgrading onnxruntime makes it stale.

Files are written atomically (a temp file renamed into place). A corrupt or unreadable file is ignored
with a warning, never an error: it costs one measurement, not a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..plugin import hardware
from ..plugin.paths import CacheWarning, cache_root, private_dir
from ..plugin.spec import InputSpec

FORMAT = "motorpool-decision"
FORMAT_VERSION = 1


def spec_key(spec: InputSpec) -> dict[str, Any]:
    """The parts of a spec a measurement depends on (not the value ranges of integer examples)."""
    return {"inputs": [[t.name, list(t.shape), t.dtype] for t in spec.inputs],
            "example_sizes": dict(sorted(spec.example_sizes.items()))}


def decision_key(*, model_fp: str, spec: InputSpec, precision: str, device: str, objective: str,
                 hardware_fp: str | None = None, threads: int | None = None) -> str:
    """The key of a decision: what was measured, where, and with how many threads (``torch.get_num_threads()``
    unless given): a winner at one thread need not win at eight, so a decision holds only for its own count."""
    payload = {"model": model_fp, "spec": spec_key(spec), "precision": precision, "device": device,
               "objective": objective, "hardware": hardware_fp or hardware.fingerprint(),
               "threads": threads if threads is not None else torch.get_num_threads()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Decision:
    """A measured choice: the winner, every measured candidate's figures and every dropped one's reason."""

    key: str
    winner: str
    objective: str
    #: measured candidates, best first: {"backend", "score", "figures"...}
    ranking: list[dict[str, Any]]
    #: candidates that failed or were skipped: {"backend", "status", "reason"}
    dropped: list[dict[str, Any]] = field(default_factory=list)
    #: backend name -> the versions it reported when measured
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    hardware: str = ""
    precision: str = "fp32"
    device: str = "auto"
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), format=FORMAT, format_version=FORMAT_VERSION)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Decision":
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
        if not isinstance(d.get("winner"), str) or not isinstance(d.get("ranking"), list):
            raise ValueError("no winner or ranking in it")
        _check_types(d)
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})

    def stale_because(self, current_versions: Mapping[str, Mapping[str, str]]) -> str | None:
        """Why this decision no longer holds given each backend's current versions, or None."""
        for name, then in self.versions.items():
            now = current_versions.get(name)
            if now is None:
                return f"{name} (measured then) is not available now"
            changed = sorted(k for k in then if now.get(k) != then[k])
            if changed:
                return f"{name}: " + ", ".join(f"{k} {then[k]} -> {now.get(k)}" for k in changed)
        return None


def _check_types(d: Mapping[str, Any]) -> None:
    """Raise ValueError unless every field a reader uses has the JSON type it expects."""
    for field_name, kind in (("key", str), ("objective", str), ("hardware", str), ("precision", str),
                             ("device", str), ("created", str), ("dropped", list), ("versions", dict)):
        if field_name in d and not isinstance(d[field_name], kind):
            raise ValueError(f"{field_name} is {type(d[field_name]).__name__}, expected {kind.__name__}")
    for i, m in enumerate(d["ranking"]):
        if not isinstance(m, dict) or not isinstance(m.get("backend"), str):
            raise ValueError(f"ranking[{i}] is {m!r}, expected an object with a backend name")
    for i, m in enumerate(d.get("dropped", [])):
        if not isinstance(m, dict):
            raise ValueError(f"dropped[{i}] is {m!r}, expected an object")
    for name, then in d.get("versions", {}).items():
        if not isinstance(then, dict) or not all(isinstance(v, str) for v in then.values()):
            raise ValueError(f"versions[{name!r}] is {then!r}, expected {{package: version}}")


class DecisionCache:
    """Decisions on disk, one JSON file per key, under ``root`` (default ``cache_root()/decisions``)."""

    def __init__(self, root: str | Path | None = None):
        self._default = root is None
        self.root = Path(root) if root is not None else cache_root("decisions")

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str, current_versions: Mapping[str, Mapping[str, str]] | None = None) -> Decision | None:
        """The decision stored under ``key``, or None when absent, corrupt (warned) or stale."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            warnings.warn(f"motorpool: cannot read decision cache file {path}: {exc}; measuring again",
                          CacheWarning, stacklevel=2)
            return None
        try:
            decision = Decision.from_dict(json.loads(data.decode("utf-8")))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # UnicodeDecodeError is a ValueError
            warnings.warn(f"motorpool: discarded the corrupt decision cache file {path} ({exc}); the next "
                          "measurement replaces it", CacheWarning, stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        if current_versions is not None and decision.stale_because(current_versions):
            return None
        return decision

    def put(self, decision: Decision) -> Path:
        """Store ``decision`` atomically: readers see the old file or the new one, never half of one."""
        if not decision.created:
            decision.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # 0o700 from the cache root down; PermissionError when another user owns it or others may write it
        cache_root("decisions", create=True) if self._default else private_dir(self.root)
        path = self.path(decision.key)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(json.dumps(decision.to_dict(), indent=2, sort_keys=True, default=str))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def clear(self) -> int:
        """Remove every stored decision; returns how many."""
        count = 0
        for p in self.root.glob("*.json"):
            p.unlink(missing_ok=True)
            count += 1
        return count
