"""The zentorch backend: ``torch.compile(model, backend="zentorch")``, AMD's ZenDNN-based Inductor variant.

zentorch replaces Inductor's matmul, convolution and embedding kernels by ZenDNN ones tuned for AMD EPYC
(Zen) CPUs and fuses the graph's patterns around them. It rewrites the weights of the module it compiles
(reorders them into ZenDNN's blocked layouts), so this backend compiles a deep copy: the caller's model,
and the pristine copy kept for saving, are never touched.

Saved as a ``torch.export`` program (``.pt2``) and recompiled with zentorch on load, like motorpool's own
``torch_compile`` backend.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path
from typing import Any

from motorpool.plugin import (ArtifactError, Availability, Backend, Capabilities, CompileError, CompileOptions,
                              Runner, Status, UnsupportedError, own_frame)

ARTIFACT = "model.pt2"
FIX = 'pip install "motorpool-zentorch"  # brings the zentorch release that pairs with your torch'
#: zentorch is built and supported for AMD EPYC only. Set to 1 to try it on another x86-64 CPU anyway
#: (ZenDNN runs on any x86-64 CPU with AVX2; AMD does not support it there): used to test this plugin.
ANY_CPU_ENV = "MOTORPOOL_ZENTORCH_ANY_CPU"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def cpu_vendor() -> tuple[str, str]:
    """(vendor id, model name) of this machine's CPU from ``/proc/cpuinfo``; empty strings where unknown."""
    vendor = model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "model name" and not model:
                    model = value.strip()
                if vendor and model:
                    break
    except OSError:
        pass
    return vendor, model


def platform_problem() -> str | None:
    """Why zentorch cannot run on this machine, or None where it can (Linux x86-64 on an AMD CPU)."""
    machine = platform.machine().lower()
    if not sys.platform.startswith("linux") or machine not in ("x86_64", "amd64"):
        return f"zentorch ships for Linux x86-64 only (this is {sys.platform} {platform.machine()})"
    if os.environ.get(ANY_CPU_ENV) == "1":
        return None
    vendor, model = cpu_vendor()
    if vendor != "AuthenticAMD":
        return (f"zentorch (AMD ZenDNN) is built for AMD EPYC CPUs; this CPU is {vendor or 'of unknown vendor'}"
                f"{f' ({model})' if model else ''}. Set {ANY_CPU_ENV}=1 to try it anyway")
    return None


def _warm_inputs(spec, *, batch: int | None = None):
    """Fresh random inputs of size >= 2 on every dynamic dimension (dynamo specialises a size-1 one), or of
    batch ``batch``, each dynamic axis marked dynamic so one graph serves every size."""
    import torch

    sizes = {name: max(2, spec.example_sizes.get(name, 2)) for name in spec.dynamic_dims}
    if batch is not None:
        sizes["batch"] = batch
    inputs = spec.random_inputs(sizes=sizes, device="cpu")
    if batch is None:
        for t, x in zip(spec.inputs, inputs):
            for axis, d in enumerate(t.shape):
                if isinstance(d, str):
                    torch._dynamo.mark_dynamic(x, axis)
    return inputs


def _compile(module, spec):
    """``module`` compiled by zentorch and warmed up (at sizes >= 2, then batch 1) so calls never recompile."""
    import torch
    import zentorch  # noqa: F401 - importing registers the "zentorch" torch.compile backend

    # a dynamo cache of its own: engines of one model class would share one and, past its limit, run eager
    compiled = torch.compile(own_frame(module), backend="zentorch")
    with torch.inference_mode():
        compiled(*_warm_inputs(spec))
        if spec.has_dynamic_batch:
            compiled(*_warm_inputs(spec, batch=1))
    return compiled


def _export(module, spec):
    """``torch.export`` of ``module`` with the spec's named dynamic dimensions."""
    import torch

    dims = {name: torch.export.Dim(name, min=1) for name in spec.dynamic_dims}
    sizes = {name: max(2, spec.example_sizes.get(name, 2)) for name in spec.dynamic_dims}
    args = tuple(spec.random_inputs(sizes=sizes, device="cpu"))
    dynamic = tuple({axis: dims[d] for axis, d in enumerate(t.shape) if isinstance(d, str)} or None
                    for t in spec.inputs)
    return torch.export.export(module, args, dynamic_shapes=dynamic if dims else None)


class ZentorchRunner(Runner):
    """A zentorch-compiled module. dynamo's caches are process-global: calls go through the engine's lock."""

    thread_safe = False

    def __init__(self, compiled, source, *, spec, precision: str, info: dict[str, Any]):
        self._compiled = compiled
        self._source = source  # the unrewritten module: what save exports
        self._spec = spec
        self.device = "cpu"
        self.precision = precision
        self.info = dict(info)

    def run(self, inputs: list[Any]) -> list[Any]:
        import torch
        import torch.utils._pytree as pytree

        with torch.inference_mode():
            return pytree.tree_flatten(self._compiled(*inputs))[0]

    def save(self, directory: Path) -> dict[str, Any]:
        import torch

        try:
            program = _export(self._source, self._spec)
        except Exception as exc:  # noqa: BLE001 - the exporter's reason is the answer
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise UnsupportedError(f"cannot save a zentorch engine: torch.export cannot capture this model "
                                   f"({type(exc).__name__}: {first})", backend="zentorch") from exc
        torch.export.save(program, directory / ARTIFACT)
        return {"file": ARTIFACT, "format": "torch.export", "zentorch": self.info.get("zentorch")}


class ZentorchBackend(Backend):
    name = "zentorch"
    description = "zentorch: AMD ZenDNN kernels under torch.compile (AMD EPYC CPUs)"
    capabilities = Capabilities(
        devices=("cpu",), precisions=frozenset({"fp32"}), dynamic_batch=True, dynamic_shapes=True,
        thread_safe=False, serializable=True, compile_cost="high", priority={"*": 60},
    )

    def availability(self) -> Availability:
        version = _version("zentorch")
        torch_version = _version("torch") or ""
        versions = {k: v for k, v in (("zentorch", version), ("torch", torch_version)) if v}
        if version is None or importlib.util.find_spec("zentorch") is None:
            return Availability(Status.NOT_INSTALLED, reason="zentorch is not installed", fix=FIX,
                                versions=versions)
        problem = platform_problem()
        if problem:
            return Availability.unsupported_platform(problem, version=version, versions=versions)
        if torch_version and _major_minor(version) != _major_minor(torch_version):
            want = ".".join(_major_minor(torch_version))
            return Availability(Status.NOT_INSTALLED,
                                reason=f"zentorch {version} pairs with torch {'.'.join(_major_minor(version))}, "
                                       f"this is torch {torch_version}",
                                fix=f'pip install "zentorch=={want}.*"', versions=versions)
        return Availability.ok(version=version, devices=["cpu"], versions=versions)

    def compile(self, model, example_inputs: tuple, options: CompileOptions) -> Runner:
        problem = self.supports(precision=options.precision, device=options.device)
        if problem:
            raise UnsupportedError(problem, backend=self.name)
        # zentorch rewrites the weights it compiles: keep one pristine copy (saved later), compile another
        source = copy.deepcopy(model).eval()
        try:
            compiled = _compile(copy.deepcopy(source), options.spec)
        except Exception as exc:  # noqa: BLE001 - zentorch's own error is the reason
            raise CompileError(f"torch.compile(backend='zentorch') failed: {type(exc).__name__}: "
                               f"{str(exc)[:2000]}", backend=self.name) from exc
        return ZentorchRunner(compiled, source, spec=options.spec, precision=options.precision,
                              info=self._info())

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        import torch

        try:
            program = torch.export.load(directory / metadata.get("file", ARTIFACT))
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"cannot read the zentorch engine's program: {exc}") from exc
        source = program.module()
        try:
            compiled = _compile(copy.deepcopy(source), options.spec)
        except Exception as exc:  # noqa: BLE001
            raise CompileError(f"torch.compile(backend='zentorch') failed on load: {type(exc).__name__}: "
                               f"{str(exc)[:2000]}", backend=self.name) from exc
        return ZentorchRunner(compiled, source, spec=options.spec, precision=options.precision,
                              info=self._info())

    @staticmethod
    def _info() -> dict[str, Any]:
        vendor, model = cpu_vendor()
        return {"runtime": "zentorch (ZenDNN)", "zentorch": _version("zentorch"), "cpu": model or vendor}
