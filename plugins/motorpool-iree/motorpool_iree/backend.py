"""The IREE backend: ``iree.turbine.aot.export`` imports the model (through ``torch.export``) to MLIR,
``iree.compiler`` compiles it for the ``llvm-cpu`` target into a ``.vmfb`` flatbuffer, and ``iree.runtime``
runs that on its ``local-task`` CPU driver.

Runs are thread-safe: the compiled module is shared, and each calling thread gets its own IREE context
(a context carries mutable VM state, so it is never shared between threads).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from pathlib import Path
from typing import Any

from motorpool.plugin import (ArtifactError, Availability, Backend, Capabilities, CompileError, CompileOptions,
                              Runner, Status, UnsupportedError)

ARTIFACT = "model.vmfb"
DRIVER = "local-task"
TARGET = "llvm-cpu"
#: the distributions this backend runs on, and the one command that installs them
DISTRIBUTIONS = ("iree-base-runtime", "iree-base-compiler", "iree-turbine")
FIX = 'pip install "motorpool-iree"  # brings iree-base-runtime, iree-base-compiler, iree-turbine'


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class IreeRunner(Runner):
    """A compiled ``.vmfb`` module, called with NumPy arrays; one IREE context per calling thread."""

    native_inputs = "numpy"
    thread_safe = True

    def __init__(self, vmfb: bytes, *, function: str, device: str, precision: str, info: dict[str, Any]):
        import iree.runtime as rt

        self._rt = rt
        self._vmfb = vmfb
        self._function_name = function
        self.device = device
        self.precision = precision
        self.info = dict(info)
        self._config = rt.Config(DRIVER)
        self._module = rt.VmModule.copy_buffer(self._config.vm_instance, vmfb)
        self._local = threading.local()
        self._function()  # fail at compile/load time, not on the first call

    def _function(self):
        fn = getattr(self._local, "fn", None)
        if fn is None:
            ctx = self._rt.SystemContext(config=self._config)
            ctx.add_vm_module(self._module)
            module = ctx.modules[self._module.name]
            try:
                fn = module[self._function_name]
            except KeyError:
                raise ArtifactError(f"the IREE module has no function {self._function_name!r}") from None
            self._local.ctx, self._local.fn = ctx, fn
        return fn

    def run(self, inputs: list[Any]) -> list[Any]:
        result = self._function()(*inputs)
        if not isinstance(result, (tuple, list)):
            result = (result,)
        return [r.to_host() if hasattr(r, "to_host") else r for r in result]

    def save(self, directory: Path) -> dict[str, Any]:
        (directory / ARTIFACT).write_bytes(self._vmfb)
        return {"file": ARTIFACT, "function": self._function_name, "target": TARGET, "driver": DRIVER,
                "target_cpu": self.info.get("target_cpu")}


class IreeBackend(Backend):
    name = "iree"
    description = "IREE: iree-turbine import, llvm-cpu code generation, iree.runtime local-task"
    capabilities = Capabilities(
        devices=("cpu",), precisions=frozenset({"fp32"}), dynamic_batch=True, dynamic_shapes=True,
        thread_safe=True, serializable=True, compile_cost="medium", priority={"*": 70},
        native_inputs="numpy",
    )
    #: compile for this machine's CPU (AVX-512, AMX...); the manifest's hardware fingerprint guards loads
    target_cpu = "host"

    def availability(self) -> Availability:
        versions = {d: v for d in DISTRIBUTIONS if (v := _version(d))}
        missing = [d for d in DISTRIBUTIONS if d not in versions]
        if missing:
            return Availability(Status.NOT_INSTALLED, reason=f"{', '.join(missing)} not installed", fix=FIX,
                                versions=versions)
        for module in ("iree.runtime", "iree.compiler"):
            if importlib.util.find_spec(module) is None:
                return Availability(Status.NOT_INSTALLED, reason=f"{module} cannot be found", fix=FIX,
                                    versions=versions)
        try:
            import iree.runtime as rt

            drivers = rt.query_available_drivers()
        except Exception as exc:  # noqa: BLE001 - a broken install is an answer, never a crash
            return Availability.import_failed("iree-base-runtime", exc, fix=FIX)
        if DRIVER not in drivers:
            return Availability.unsupported_platform(
                f"this iree-base-runtime has no {DRIVER!r} driver (it has {', '.join(drivers) or 'none'})",
                fix=FIX, version=versions.get("iree-base-runtime"), versions=versions)
        return Availability.ok(version=versions["iree-base-runtime"], devices=["cpu"], versions=versions)

    def compile(self, model, example_inputs: tuple, options: CompileOptions) -> Runner:
        problem = self.supports(precision=options.precision, device=options.device)
        if problem:
            raise UnsupportedError(problem, backend=self.name)
        if options.device != "cpu":
            raise UnsupportedError(f"iree runs on cpu here, not {options.device!r}", backend=self.name)
        mlir = self._import(model, options)
        import iree.compiler

        flags = [f"--iree-llvmcpu-target-cpu={self.target_cpu}"]
        try:
            vmfb = iree.compiler.compile_str(mlir, target_backends=[TARGET], extra_args=flags)
        except Exception as exc:  # noqa: BLE001 - the compiler's diagnostics are the reason
            raise CompileError(f"iree-compile ({TARGET}) failed: {type(exc).__name__}: {str(exc)[:3000]}",
                               backend=self.name) from exc
        info = {"runtime": "IREE", "target": TARGET, "driver": DRIVER, "target_cpu": self.target_cpu,
                "importer": "iree.turbine.aot.export", "vmfb_bytes": len(vmfb)}
        return IreeRunner(vmfb, function="main", device="cpu", precision=options.precision, info=info)

    def _import(self, model, options: CompileOptions) -> str:
        """The model as MLIR text, exported with the spec's named dynamic dimensions."""
        import torch
        from iree.turbine import aot

        spec = options.spec
        dims = {name: torch.export.Dim(name, min=1) for name in spec.dynamic_dims}
        # Size 2 on every dynamic dimension: torch.export specialises a dimension it sees at size 1.
        sizes = {name: max(2, spec.example_sizes.get(name, 2)) for name in spec.dynamic_dims}
        args = tuple(spec.random_inputs(sizes=sizes, device="cpu"))
        dynamic = [{axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} or None
                   for t in spec.inputs]
        try:
            program = torch.export.export(model, args, dynamic_shapes=tuple(dynamic) if dims else None)
            # Lower to core ATen first: IREE's torch-mlir has no lowering for aten.gru/aten.lstm
            # (their decompositions are fine) nor for squeeze over a list of dims.
            program = program.run_decompositions(_decompositions())
            return str(aot.export(program).mlir_module)
        except Exception as exc:  # noqa: BLE001
            raise CompileError(f"iree.turbine could not import the model: {type(exc).__name__}: "
                               f"{str(exc)[:3000]}", backend=self.name) from exc

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        vmfb = (directory / metadata.get("file", ARTIFACT)).read_bytes()
        info = {"runtime": "IREE", "target": metadata.get("target", TARGET), "driver": DRIVER,
                "target_cpu": metadata.get("target_cpu")}
        return IreeRunner(vmfb, function=metadata.get("function", "main"), device="cpu",
                          precision=options.precision, info=info)


def _squeeze_dims(x, dims):
    """``aten.squeeze.dims`` as one reshape (IREE's importer lowers ``squeeze.dim``, not ``squeeze.dims``).

    Only statically size-1 dimensions are dropped, exactly as squeeze would; a dynamic dimension stays.
    """
    drop = {d % x.dim() for d in dims}
    return x.reshape([s for i, s in enumerate(x.shape) if not (i in drop and isinstance(s, int) and s == 1)])


def _decompositions():
    import torch

    table = torch.export.default_decompositions()
    table[torch.ops.aten.squeeze.dims] = _squeeze_dims
    # Inference BatchNorm is a core ATen op that IREE's torch-mlir cannot legalize; written out as the
    # arithmetic it is (torch's own decomposition of it is not functional, which aot.export refuses).
    table[torch.ops.aten._native_batch_norm_legit_no_training.default] = _batch_norm_inference
    return table


def _batch_norm_inference(x, weight, bias, running_mean, running_var, momentum, eps):
    import torch

    shape = [1, -1] + [1] * (x.dim() - 2)
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    y = (x - running_mean.reshape(shape)) * scale.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    empty = x.new_zeros((0,))
    return y, empty, empty
