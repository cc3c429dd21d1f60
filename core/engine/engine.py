"""The Engine: a compiled model, called exactly like the model, on any backend."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..plugin import hardware
from ..plugin.contract import Runner
from ..plugin.errors import ArtifactError, InputError, MotorpoolError, UnsupportedError
from ..plugin.helpers import to_numpy
from .batching import map_batches
from .manifest import ARTIFACT_DIR, build_manifest, runtime_versions, write_atomically, write_manifest
from .report import Report
from ..plugin.spec import InputSpec


class Engine:
    """What ``motorpool.compile`` and ``motorpool.load`` return.

    Call it like the model: the same positional inputs, the same output structure. Torch tensors in give
    torch tensors out; NumPy arrays in give NumPy arrays out. Inputs are checked against ``input_spec``
    first, so a wrong call raises :class:`InputError` naming the input. Safe to call from many threads:
    a backend that is not thread-safe is called under a lock.
    """

    def __init__(self, runner: Runner, *, backend: str, spec: InputSpec, output_tree: pytree.TreeSpec,
                 report: Report, backend_version: str | None = None, options: dict | None = None):
        self._runner = runner
        self._backend = backend
        self._spec = spec
        self._tree = output_tree
        self._lock = None if runner.thread_safe else threading.Lock()
        self._native = getattr(runner, "native_inputs", "torch")
        self.report = report
        self.backend_version = backend_version
        self.options = dict(options or {})
        self.manifest: dict[str, Any] | None = None  # set when loaded from disk
        self.gate = None  # the motorpool.Gate it passed, and the reference outputs it was scored against
        self.gate_reference = None

    # -- what it is --------------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def device(self) -> str:
        return self._runner.device

    @property
    def precision(self) -> str:
        return self._runner.precision

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def runner(self) -> Runner:
        """The backend's own runner (for measuring the engine's overhead over it)."""
        return self._runner

    def __repr__(self) -> str:
        return (f"<motorpool.Engine backend={self.backend!r} device={self.device!r} precision={self.precision!r} "
                f"inputs={self._spec.describe()}>")

    # -- calling -------------------------------------------------------------------------------------

    def __call__(self, *inputs: Any) -> Any:
        self._spec.check(inputs)
        as_numpy = all(isinstance(x, np.ndarray) for x in inputs)
        flat = self.run_flat(self._convert_in(inputs))
        return pytree.tree_unflatten(self._convert_out(flat, as_numpy), self._tree)

    def map(self, inputs: Iterable[Any], batch_size: int | None = None) -> Iterable[Any]:
        """Run an iterable (or DataLoader) of samples or small batches in batches; results in order.

        See :func:`motorpool.engine.batching.map_batches`: a static batch pads the last batch and trims the padding.
        """
        return map_batches(self, inputs, batch_size=batch_size)

    def run_flat(self, inputs: list[Any]) -> list[Any]:
        """Run already-checked inputs in the runner's native kind; flat outputs. No spec check."""
        try:
            if self._lock is None:
                return self._runner.run(inputs)
            with self._lock:
                return self._runner.run(inputs)
        except MotorpoolError:
            raise
        except Exception as exc:  # a runtime's own message, given the context it lacks
            outside = _outside_examples_range(self._spec, inputs)
            if outside is not None:  # a token id past the vocabulary: the caller's input, not the engine
                name, seen, (low, high) = outside
                raise InputError(f"input {name!r}: values {seen[0]:g}..{seen[1]:g} lie outside the range the "
                                 f"examples had ({low:g}..{high:g}), and the {self.backend} engine failed on them "
                                 f"({type(exc).__name__}: {str(exc)[:300]})", input=name,
                                 expected=f"{low:g}..{high:g}", got=f"{seen[0]:g}..{seen[1]:g}") from exc
            raise RuntimeError(f"{self.backend} engine failed on inputs "
                               f"{_describe_values(inputs)} (spec {self._spec.describe()}): "
                               f"{type(exc).__name__}: {exc}") from exc

    def _convert_in(self, inputs: tuple[Any, ...]) -> list[Any]:
        """Checked inputs in the runner's native kind, normalized so every runtime reads them right: native byte
        order (a ``>f4`` array passes the dtype check as float32, and runtimes read native bytes), negative and
        conjugate bits resolved, and C order for NumPy runtimes (which read the buffer as laid out)."""
        numpy_native = self._native == "numpy"
        out = []
        for x in inputs:
            if isinstance(x, np.ndarray):
                if not x.dtype.isnative:
                    x = x.astype(x.dtype.newbyteorder("="))
                if numpy_native:
                    if not x.flags.c_contiguous:
                        x = np.ascontiguousarray(x)
                else:
                    if any(s < 0 for s in x.strides):  # torch.from_numpy refuses negative strides
                        x = np.ascontiguousarray(x)
                    x = torch.from_numpy(x)
            else:
                if x.is_neg() or x.is_conj():
                    x = x.resolve_neg().resolve_conj()
                if numpy_native:
                    x = to_numpy(x)
                    if not x.flags.c_contiguous:
                        x = np.ascontiguousarray(x)
            out.append(x)
        return out

    def _convert_out(self, outputs: list[Any], as_numpy: bool) -> list[Any]:
        if as_numpy:
            return [x if isinstance(x, np.ndarray) or not isinstance(x, torch.Tensor) else to_numpy(x)
                    for x in outputs]
        device = self._spec.device  # where tensors live (a Core ML "ane" engine's are in host memory)
        out = []
        for x in outputs:
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(x)
                if device != "cpu" and torch.device(device).type in ("cuda", "mps", "xpu"):
                    x = x.to(device)
            out.append(x)
        return out

    # -- saving --------------------------------------------------------------------------------------

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a directory: ``artifact/`` (the backend's own files) and ``manifest.json``.

        The directory appears whole or not at all.
        """
        path = Path(path)
        try:
            tree = pytree.treespec_dumps(self._tree)
        except Exception as exc:  # noqa: BLE001 - e.g. an output type pytree cannot serialize
            raise UnsupportedError(f"cannot save: the model's output structure ({self._tree}) cannot be "
                                   f"serialized: {exc}", backend=self.backend) from exc

        def fill(tmp: Path) -> None:
            art = tmp / ARTIFACT_DIR
            art.mkdir()
            metadata = self._runner.save(art)
            manifest = self.manifest_for(tree, metadata)
            if self.gate is not None:  # the quality gate's data, beside the artifact, as .npy
                manifest["gate"] = self.gate.save_beside(self, tmp)
            write_manifest(tmp, manifest)

        write_atomically(path, fill, overwrite=overwrite)
        return path

    def manifest_for(self, tree: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """This engine's manifest, for an artifact whose runner wrote ``metadata`` (see ``build_manifest``)."""
        versions = runtime_versions()
        versions.update(self.report.info.get("versions", {}))
        return build_manifest(backend=self.backend, backend_version=self.backend_version, versions=versions,
                              device=self.device, precision=self.precision, input_spec=self._spec.to_dict(),
                              output_tree=tree,
                              hardware={"fingerprint": hardware.fingerprint(), "summary": hardware.summary()},
                              verification=self.report.verification, compile_time_s=self.report.compile_time_s,
                              options=self.options, backend_metadata=metadata)


def _outside_examples_range(spec: InputSpec, inputs: list[Any]):
    """The first integer input whose values leave the range its examples had: (name, (min, max), (low, high))."""
    for t, x in zip(spec.inputs, inputs):
        if t.low is None or t.high is None or not _is_integer_array(x):
            continue
        lo, hi = float(x.min()), float(x.max())
        if lo < t.low or hi > t.high:
            return t.name, (lo, hi), (t.low, t.high)
    return None


def _is_integer_array(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.numel() > 0 and not (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool)
    return isinstance(x, np.ndarray) and x.size > 0 and np.issubdtype(x.dtype, np.integer)


def _describe_values(values: Iterable[Any]) -> str:
    parts = []
    for v in values:
        if isinstance(v, (np.ndarray, torch.Tensor)):
            dt = v.dtype.name if isinstance(v, np.ndarray) else str(v.dtype).removeprefix("torch.")
            parts.append(f"{dt}{list(v.shape)}")
        else:
            parts.append(type(v).__name__)
    return "(" + ", ".join(parts) + ")"


def check_loadable(manifest: dict[str, Any], path: Path) -> list[str]:
    """Differences between where the artifact was made and here, as readable sentences."""
    notes = []
    made = manifest.get("hardware", {}).get("fingerprint")
    if made and made != hardware.fingerprint():
        notes.append(f"{path} was made for other hardware ({manifest['hardware'].get('summary')}, fingerprint "
                     f"{made}); this machine is {hardware.fingerprint()} ({hardware.summary()})")
    here = runtime_versions()
    for key, version in manifest.get("versions", {}).items():
        if key in here and here[key] != version:
            notes.append(f"{path} was made with {key} {version}; this process has {key} {here[key]}")
    return notes


__all__ = ["Engine", "ArtifactError", "InputError"]
