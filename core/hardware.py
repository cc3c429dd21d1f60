"""What hardware this process sees: CPU model and ISA features, NVIDIA GPUs, Apple silicon.

Detection is cheap and cached per process. ``fingerprint()`` is a short stable string for manifests and
caches: two machines with the same fingerprint run an artifact the same way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

#: ISA features worth naming for inference (x86 /proc/cpuinfo flag -> our name)
_X86_FEATURES = {
    "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16", "avx512_fp16": "avx512_fp16", "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8", "amx_tile": "amx_tile", "amx_fp16": "amx_fp16",
}


@dataclass(frozen=True)
class CPUInfo:
    vendor: str
    model: str
    arch: str
    cores: int
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class GPUInfo:
    index: int
    name: str
    kind: str  # "cuda", "mps", "xpu"
    capability: str | None = None
    memory_gb: float | None = None


@dataclass(frozen=True)
class Hardware:
    cpu: CPUInfo
    gpus: tuple[GPUInfo, ...] = ()
    os: str = ""
    apple_silicon: bool = False
    neural_engine: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hardware_class(self) -> str:
        """The class ``auto`` ranks backends for: nvidia, apple, intel-cpu or cpu."""
        if any(g.kind == "cuda" for g in self.gpus):
            return "nvidia"
        if self.apple_silicon:
            return "apple"
        if self.cpu.vendor == "GenuineIntel":
            return "intel-cpu"
        return "cpu"

    @property
    def devices(self) -> list[str]:
        devs = ["cpu"] + [f"cuda:{g.index}" for g in self.gpus if g.kind == "cuda"]
        if any(g.kind == "mps" for g in self.gpus):
            devs.append("mps")
        if self.neural_engine:
            devs.append("ane")
        return devs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hardware_class"] = self.hardware_class
        d["fingerprint"] = fingerprint()
        return d


def _cpu_info() -> CPUInfo:
    vendor, model, flags = platform.processor() or "", "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id" and not vendor.startswith("Genuine"):
                    vendor = value
                elif key == "model name" and not model:
                    model = value
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        model = model or _sysctl("machdep.cpu.brand_string")
        vendor = "Apple" if platform.machine() == "arm64" else (_sysctl("machdep.cpu.vendor") or vendor)
    features = tuple(sorted(ours for flag, ours in _X86_FEATURES.items() if flag in flags))
    if platform.machine() in ("arm64", "aarch64"):
        features += ("neon",)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CPUInfo(vendor or "unknown", model or platform.machine(), platform.machine(), cores, features)


def _sysctl(key: str) -> str:
    import subprocess

    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=2).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _gpus() -> tuple[GPUInfo, ...]:
    import torch

    gpus: list[GPUInfo] = []
    try:
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                gpus.append(GPUInfo(i, p.name, "cuda", f"{p.major}.{p.minor}", round(p.total_memory / 2**30, 1)))
    except Exception:  # noqa: BLE001 - a broken driver means no usable GPU, not a crash
        pass
    try:
        if torch.backends.mps.is_available():
            gpus.append(GPUInfo(0, "Apple GPU (MPS)", "mps"))
    except Exception:  # noqa: BLE001
        pass
    return tuple(gpus)


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    """The hardware of this process, detected once."""
    cpu = _cpu_info()
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    return Hardware(cpu=cpu, gpus=_gpus(), os=f"{platform.system()} {platform.release()}",
                    apple_silicon=apple, neural_engine=apple)


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """A short stable id of what decides how an artifact runs: CPU model and features, GPUs, OS family."""
    hw = detect()
    key = {
        "cpu": [hw.cpu.vendor, hw.cpu.model, hw.cpu.arch, list(hw.cpu.features)],
        "gpus": [[g.kind, g.name, g.capability] for g in hw.gpus],
        "os": platform.system(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{platform.system().lower()}-{hw.cpu.arch}-{digest}"


def summary() -> str:
    hw = detect()
    parts = [f"{hw.cpu.model} ({hw.cpu.cores} cores; {' '.join(hw.cpu.features) or 'no notable ISA features'})"]
    parts += [f"{g.kind}:{g.index} {g.name}" + (f" sm{g.capability}" if g.capability else "") for g in hw.gpus]
    return "; ".join(parts)
