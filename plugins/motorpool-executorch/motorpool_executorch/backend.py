"""The ExecuTorch backend: ``torch.export`` (named dynamic dimensions with bounds) ->
``executorch.exir.to_edge_transform_and_lower`` with the XNNPACK partitioner -> ``.to_executorch()`` -> a ``.pte``
program, run by the ExecuTorch runtime's Python bindings (``executorch.runtime.Runtime``).

ExecuTorch plans every intermediate buffer ahead of time, so each dynamic dimension needs an upper bound: the
batch dimension is bounded by ``max_sizes["batch"]`` (default :data:`DEFAULT_MAX_BATCH`), every other named
dimension by ``max_sizes[name]`` (default ``max(DEFAULT_MAX_SIZE, 2 x the example's size)``); ``min_sizes``
sets lower bounds (default 1). A call past a bound is a :class:`motorpool.InputError` naming the bound.

Runs are thread-safe: the ``.pte`` bytes are shared, and each calling thread loads its own program and method
(a loaded method owns its planned memory, which one call overwrites while it runs).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping

import motorpool
from motorpool import (Availability, Backend, Capabilities, CompileError, CompileOptions, InputError, InputSpec,
                       Runner, Status, UnsupportedError)
from motorpool.plugin import Option, artifact_file

ARTIFACT = "model.pte"
METHOD = "forward"
DELEGATE = "XnnpackBackend"
DISTRIBUTION = "executorch"
FIX = 'pip install "motorpool-executorch"  # brings executorch (exporter, XNNPACK delegate, runtime)'
#: what the backend needs from the wheel, as files under the executorch package
PARTS = {"runtime bindings": "extension/pybindings/_C*", "exporter (exir)": "exir/__init__.py",
         "XNNPACK partitioner": "backends/xnnpack/partition/xnnpack_partitioner.py"}
#: the batch dimension's upper bound unless ``options={"max_sizes": {"batch": N}}`` says otherwise
DEFAULT_MAX_BATCH = 64
#: every other dynamic dimension's upper bound (at least twice the example's size)
DEFAULT_MAX_SIZE = 256


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def dim_bounds(spec: InputSpec, options: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(min, max) for each named dynamic dimension of ``spec``, from the ``min_sizes``/``max_sizes`` options."""
    mins = dict(options.get("min_sizes") or {})
    maxs = dict(options.get("max_sizes") or {})
    unknown = sorted((set(mins) | set(maxs)) - spec.dynamic_dims)
    if unknown:
        raise InputError(f"options min_sizes/max_sizes name {unknown}, which are not dynamic dimensions of the "
                         f"inputs {spec.describe()}; dynamic dimensions are {sorted(spec.dynamic_dims) or 'none'}",
                         input="options", expected=sorted(spec.dynamic_dims), got=unknown)
    out = {}
    for name in sorted(spec.dynamic_dims):
        example = int(spec.example_sizes.get(name, 1))
        default_max = DEFAULT_MAX_BATCH if name == "batch" else DEFAULT_MAX_SIZE
        lo, hi = mins.get(name, 1), maxs.get(name, max(default_max, 2 * example))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) or not 1 <= lo <= example <= hi:
            raise InputError(f"dynamic dimension {name!r}: need integers 1 <= min_sizes ({lo!r}) <= example size "
                             f"({example}) <= max_sizes ({hi!r})", input="options",
                             expected="1 <= min <= example <= max", got=(lo, example, hi))
        out[name] = (lo, hi)
    return out


def runtime():
    """The ExecuTorch runtime, checked to carry the XNNPACK delegate the programs are lowered to."""
    try:
        from executorch.runtime import Runtime

        rt = Runtime.get()
        delegates = rt.backend_registry.registered_backend_names
    except Exception as exc:  # noqa: BLE001
        raise motorpool.BackendUnavailable("executorch", Availability.import_failed(DISTRIBUTION, exc, fix=FIX)) \
            from exc
    if DELEGATE not in delegates:
        raise UnsupportedError(f"this executorch runtime has no {DELEGATE} delegate (it has "
                               f"{', '.join(delegates) or 'none'})", backend="executorch")
    return rt


class ExecuTorchRunner(Runner):
    """A ``.pte`` program, called with torch tensors; one loaded program and method per calling thread."""

    native_inputs = "torch"
    thread_safe = True

    def __init__(self, pte: bytes, *, spec: InputSpec, bounds: Mapping[str, tuple[int, int]], precision: str,
                 info: dict[str, Any]):
        self._runtime = runtime()
        self._pte = pte
        self._spec = spec
        self._bounds = {k: tuple(v) for k, v in bounds.items()}
        self.dim_bounds = dict(self._bounds)  # the engine's spec carries them: a call past one is an InputError
        self.device = "cpu"
        self.precision = precision
        self.info = dict(info)
        self._local = threading.local()
        self._method()  # fail at compile/load time, not on the first call

    def _method(self):
        method = getattr(self._local, "method", None)
        if method is None:
            try:
                program = self._runtime.load_program(self._pte)
                method = program.load_method(METHOD)
            except Exception as exc:  # noqa: BLE001 - the runtime's verdict on the bytes is the reason
                raise motorpool.ArtifactError(f"the ExecuTorch runtime cannot load this program: "
                                              f"{type(exc).__name__}: {exc}") from exc
            if method is None:
                raise motorpool.ArtifactError(f"the ExecuTorch program has no method {METHOD!r}")
            self._local.program, self._local.method = program, method
        return method

    def _check_bounds(self, inputs: list[Any]) -> None:
        for spec, value in zip(self._spec.inputs, inputs):
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str) and dim in self._bounds:
                    lo, hi = self._bounds[dim]
                    size = int(value.shape[axis])
                    if not lo <= size <= hi:
                        raise InputError(
                            f"input {spec.name!r}: dimension {axis} ({dim!r}) is {size}, outside the bounds "
                            f"[{lo}, {hi}] this ExecuTorch program was planned for; compile with "
                            f"options={{'max_sizes': {{{dim!r}: {max(size, hi)}}}}} to raise them",
                            input=spec.name, expected=(lo, hi), got=size)

    def run(self, inputs: list[Any]) -> list[Any]:
        self._check_bounds(inputs)
        return list(self._method().execute([x.contiguous() for x in inputs]))

    def save(self, directory: Path) -> dict[str, Any]:
        (directory / ARTIFACT).write_bytes(self._pte)
        return {"file": ARTIFACT, "method": METHOD, "delegate": DELEGATE,
                "bounds": {k: list(v) for k, v in self._bounds.items()}}


class ExecuTorchBackend(Backend):
    name = "executorch"
    description = "ExecuTorch: torch.export, XNNPACK delegate, .pte programs run by the ExecuTorch runtime"
    capabilities = Capabilities(
        devices=("cpu",), precisions=frozenset({"fp32"}), dynamic_batch=True, dynamic_shapes=True,
        thread_safe=True, serializable=True, compile_cost="medium", priority={"*": 80},
        native_inputs="torch",
    )
    options = (
        Option("min_sizes", dict, None, "lower bound per dynamic dimension, e.g. {'batch': 1}"),
        Option("max_sizes", dict, None, f"upper bound per dynamic dimension (batch {DEFAULT_MAX_BATCH}, others "
               f"max({DEFAULT_MAX_SIZE}, 2 x the example's size) by default)"),
    )

    def availability(self) -> Availability:
        """Cheap: finds the distribution and its parts without importing them (importing the runtime
        costs seconds: it imports the exporter); whether the runtime has the XNNPACK delegate is checked
        when a program is first loaded (:func:`runtime`)."""
        version = _version(DISTRIBUTION)
        if version is None:
            return Availability(Status.NOT_INSTALLED, reason=f"{DISTRIBUTION} is not installed", fix=FIX)
        versions = {DISTRIBUTION: version}
        try:
            spec = importlib.util.find_spec("executorch")
        except Exception as exc:  # noqa: BLE001 - a broken install is an answer, never a crash
            return Availability.import_failed(DISTRIBUTION, exc, fix=FIX)
        if spec is None or not spec.submodule_search_locations:
            return Availability(Status.NOT_INSTALLED, reason=f"{DISTRIBUTION} {version} is registered but its "
                                "package cannot be found", fix=FIX, version=version, versions=versions)
        # Looked up as files: finding a submodule's spec imports its parent packages (exir: seconds).
        root = Path(next(iter(spec.submodule_search_locations)))
        for part, pattern in PARTS.items():
            if not any(root.glob(pattern)):
                return Availability(Status.NOT_INSTALLED, reason=f"{DISTRIBUTION} {version} has no {part} "
                                    f"({root / pattern} is missing)", fix=FIX, version=version, versions=versions)
        return Availability.ok(version=version, devices=["cpu"], versions=versions)

    def compile(self, model, example_inputs: tuple, options: CompileOptions) -> Runner:
        problem = self.supports(precision=options.precision, device=options.device)
        if problem:
            raise UnsupportedError(problem, backend=self.name)
        spec = options.spec
        bounds = dim_bounds(spec, options.extra)
        with warnings.catch_warnings():
            # torch.export and exir warn about internals (pytree LeafSpec, RNN weights) the user cannot act on
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            program = self._export(model, spec, bounds)
            pte, info = self._lower(program, spec)
        info.update({"runtime": "ExecuTorch", "delegate": DELEGATE, "pte_bytes": len(pte),
                     "bounds": {k: list(v) for k, v in bounds.items()}})
        return ExecuTorchRunner(pte, spec=spec, bounds=bounds, precision=options.precision, info=info)

    def _export(self, model, spec: InputSpec, bounds: Mapping[str, tuple[int, int]]):
        import torch

        dims = {name: torch.export.Dim(name, min=lo, max=hi) for name, (lo, hi) in bounds.items()}
        # Size 2 at least on every dynamic dimension: torch.export specialises a dimension it sees at size 1.
        sizes = {name: min(hi, max(2, spec.example_sizes.get(name, 2))) for name, (lo, hi) in bounds.items()}
        args = tuple(spec.random_inputs(sizes=sizes, device="cpu"))
        dynamic = [{axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} or None
                   for t in spec.inputs]
        try:
            return torch.export.export(model, args, dynamic_shapes=tuple(dynamic) if dims else None)
        except Exception as exc:  # noqa: BLE001
            raise CompileError(f"torch.export failed with bounds {dict(bounds)} (set them with options "
                               f"min_sizes/max_sizes): {type(exc).__name__}: {str(exc)[:3000]}",
                               backend=self.name) from exc

    def _lower(self, program, spec: InputSpec) -> tuple[bytes, dict[str, Any]]:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        try:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        except Exception as exc:  # noqa: BLE001
            raise CompileError(f"executorch could not lower the model to the XNNPACK delegate: "
                               f"{type(exc).__name__}: {str(exc)[:3000]}", backend=self.name) from exc
        lowered = edge.exported_program()
        _check_still_dynamic(lowered, spec, self.name)
        ops = [n for n in lowered.graph.nodes if n.op == "call_function"]
        delegated = sum(1 for n in ops if "call_delegate" in str(n.target))
        portable = sorted({str(n.target) for n in ops if "call_delegate" not in str(n.target)
                           and "getitem" not in str(n.target)})
        try:
            pte = edge.to_executorch().buffer
        except Exception as exc:  # noqa: BLE001
            raise CompileError(f"executorch could not plan and serialize the program: {type(exc).__name__}: "
                               f"{str(exc)[:3000]}", backend=self.name) from exc
        return pte, {"delegate_calls": delegated, "portable_ops": portable}

    def code_in_artifact(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        # a .pte is a flatbuffer of calls to the runtime's registered kernels plus XNNPACK-serialized subgraphs,
        # parsed by the runtime: data (SECURITY.md); it cannot bring kernels of its own
        return []

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        pte = artifact_file(directory, metadata.get("file", ARTIFACT)).read_bytes()
        bounds = {k: tuple(v) for k, v in (metadata.get("bounds") or {}).items()}
        info = {"runtime": "ExecuTorch", "delegate": metadata.get("delegate", DELEGATE), "pte_bytes": len(pte),
                "bounds": {k: list(v) for k, v in bounds.items()}}
        return ExecuTorchRunner(pte, spec=options.spec, bounds=bounds, precision=options.precision, info=info)


def _check_still_dynamic(lowered, spec: InputSpec, backend: str) -> None:
    """Refuse a program whose lowering fixed a dimension the spec names dynamic.

    exir's decompositions can specialise a dimension torch.export kept symbolic (the GRU decomposition fixes
    the batch): such a program accepts only the example's size, and the runtime's answer to any other would
    be a resize error at call time. (The fixed size stays a SymInt whose expression is a constant.)
    """
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    user_inputs = list(lowered.graph_signature.user_inputs)
    placeholders = {n.name: n for n in lowered.graph.nodes if n.op == "placeholder"}
    for tspec, node_name in zip(spec.inputs, user_inputs):
        node = placeholders.get(node_name)
        value = node.meta.get("val") if node is not None else None
        if value is None:
            continue
        for axis, dim in enumerate(tspec.shape):
            if isinstance(dim, str) and is_concrete_int(value.shape[axis]):
                raise UnsupportedError(
                    f"executorch's lowering fixed dimension {axis} ({dim!r}) of input {tspec.name!r} to "
                    f"{int(value.shape[axis])}: this model cannot keep {dim!r} dynamic on ExecuTorch (compile with "
                    f"a static shape, e.g. dynamic_batch=False, or use another backend)", backend=backend)
