"""What hardware this process sees: CPU model and ISA features, NVIDIA GPUs, Apple silicon, Intel GPUs.

Detection is cheap and cached per process: it reads ``/proc/cpuinfo`` (or ``sysctl`` on macOS) and asks the
torch already imported about CUDA, MPS and XPU. It imports no backend. Devices only a backend's runtime
can see (OpenVINO's Intel GPU and NPU, for instance) come from the backends' own
``Availability.devices``, which ``motorpool.list_backends()`` gathers on demand for ``motorpool doctor``.

``fingerprint()`` is a short stable string for manifests and caches: two machines with the same
fingerprint run an artifact the same way (same CPU model and ISA features, same GPUs, same OS family).
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
    "sse4_2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl", "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni", "avx512_bf16": "avx512_bf16", "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile", "amx_bf16": "amx_bf16", "amx_int8": "amx_int8", "amx_fp16": "amx_fp16",
}
#: ARM features (Linux /proc/cpuinfo "Features" word -> our name)
_ARM_FEATURES = {
    "asimd": "neon", "asimdhp": "fp16", "fphp": "fp16", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16",
    "sve": "sve", "sve2": "sve2", "sme": "sme",
}
#: macOS sysctl keys (value 1 when present) -> our name
_DARWIN_FEATURES = {
    "hw.optional.AdvSIMD": "neon", "hw.optional.arm.FEAT_FP16": "fp16", "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_SME": "sme",
    "hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f", "hw.optional.avx512vnni": "avx512_vnni",
}
#: every feature name detection can report (priority keys may name these)
FEATURE_NAMES = frozenset(_X86_FEATURES.values()) | frozenset(_ARM_FEATURES.values()) | frozenset(
    _DARWIN_FEATURES.values())
#: the hardware classes backends rank themselves for in ``Capabilities.priority`` ("*" covers the rest); which
#: CPU features matter is said by feature, not by vendor (see motorpool.plugin.priority)
HARDWARE_CLASSES = ("nvidia", "apple", "cpu")


@dataclass(frozen=True)
class CPUInfo:
    vendor: str
    model: str
    arch: str
    cores: int  # logical cores this process may run on
    features: tuple[str, ...] = ()
    physical_cores: int | None = None


@dataclass(frozen=True)
class GPUInfo:
    index: int
    name: str
    kind: str  # "cuda", "mps", "xpu"
    capability: str | None = None  # CUDA compute capability, "8.9"
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
        """The class ``auto`` ranks backends for: nvidia, apple or cpu (one of HARDWARE_CLASSES)."""
        if any(g.kind == "cuda" for g in self.gpus):
            return "nvidia"
        if self.apple_silicon:
            return "apple"
        return "cpu"

    @property
    def devices(self) -> list[str]:
        devs = ["cpu"] + [f"cuda:{g.index}" for g in self.gpus if g.kind == "cuda"]
        devs += [f"xpu:{g.index}" for g in self.gpus if g.kind == "xpu"]
        if any(g.kind == "mps" for g in self.gpus):
            devs.append("mps")
        if self.neural_engine:
            devs.append("ane")
        return devs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hardware_class"] = self.hardware_class
        d["devices"] = self.devices
        d["fingerprint"] = fingerprint()
        return d


def parse_cpuinfo(text: str) -> tuple[str, str, set[str]]:
    """(vendor, model, flags) from the text of ``/proc/cpuinfo`` (x86 ``flags`` or ARM ``Features``)."""
    vendor, model, flags = "", "", set()
    implementer = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id" and not vendor:
            vendor = value
        elif key == "CPU implementer" and not implementer:
            implementer = value
        elif key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    if not vendor and implementer:  # ARM: the implementer code names the designer
        vendor = {"0x41": "ARM", "0x61": "Apple", "0x51": "Qualcomm", "0x48": "HiSilicon", "0xc0": "Ampere",
                  "0x4e": "NVIDIA"}.get(implementer.lower(), f"ARM implementer {implementer}")
    return vendor, model, flags


def isa_features(flags: set[str], arch: str) -> tuple[str, ...]:
    """Our names for the inference-relevant ISA features among a CPU's flags."""
    table = _ARM_FEATURES if arch in ("arm64", "aarch64") else _X86_FEATURES
    return tuple(sorted({ours for flag, ours in table.items() if flag in flags}))


def _cpu_info() -> CPUInfo:
    arch = platform.machine()
    vendor, model, flags = "", "", set()
    try:
        with open("/proc/cpuinfo") as f:
            vendor, model, flags = parse_cpuinfo(f.read())
    except OSError:
        pass
    features = isa_features(flags, arch)
    if platform.system() == "Darwin":
        model = model or _sysctl("machdep.cpu.brand_string")
        vendor = "Apple" if arch == "arm64" else (_sysctl("machdep.cpu.vendor") or vendor)
        features = tuple(sorted({ours for key, ours in _DARWIN_FEATURES.items() if _sysctl(key) == "1"}))
    elif arch in ("arm64", "aarch64") and "neon" not in features:
        features = tuple(sorted(set(features) | {"neon"}))  # AArch64 always has Advanced SIMD
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CPUInfo(vendor or platform.processor() or "unknown", model or arch, arch, cores, features,
                   _physical_cores())


def _physical_cores() -> int | None:
    try:
        import psutil  # optional: the "bench" extra brings it

        return psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - not installed, or it cannot tell here
        return None


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
    try:  # Intel GPUs as PyTorch sees them (torch.xpu); OpenVINO's view comes from its backend
        xpu = getattr(torch, "xpu", None)
        if xpu is not None and xpu.is_available():
            for i in range(xpu.device_count()):
                p = xpu.get_device_properties(i)
                mem = getattr(p, "total_memory", None)
                gpus.append(GPUInfo(i, p.name, "xpu", None, round(mem / 2**30, 1) if mem else None))
    except Exception:  # noqa: BLE001
        pass
    return tuple(gpus)


def _extra() -> dict[str, Any]:
    import torch

    extra: dict[str, Any] = {"torch": torch.__version__}
    if torch.version.cuda:
        extra["cuda_runtime"] = torch.version.cuda
    return extra


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    """The hardware of this process, detected once."""
    cpu = _cpu_info()
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    # Every Apple-silicon Mac has a Neural Engine; only Core ML reaches it, so it is a device, not a GPU.
    return Hardware(cpu=cpu, gpus=_gpus(), os=f"{platform.system()} {platform.release()}",
                    apple_silicon=apple, neural_engine=apple, extra=_extra())


def fingerprint_of(hw: Hardware) -> str:
    """The fingerprint of ``hw``: CPU model and features, GPUs, OS family (not core counts or versions)."""
    key = {
        "cpu": [hw.cpu.vendor, hw.cpu.model, hw.cpu.arch, list(hw.cpu.features)],
        "gpus": [[g.kind, g.name, g.capability] for g in hw.gpus],
        "os": hw.os.split(" ")[0],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{key['os'].lower() or 'unknown'}-{hw.cpu.arch}-{digest}"


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """A short stable id of what decides how an artifact runs here; see :func:`fingerprint_of`."""
    return fingerprint_of(detect())


def summary() -> str:
    hw = detect()
    parts = [f"{hw.cpu.model} ({hw.cpu.cores} cores; {' '.join(hw.cpu.features) or 'no notable ISA features'})"]
    parts += [f"{g.kind}:{g.index} {g.name}" + (f" sm{g.capability}" if g.capability else "") for g in hw.gpus]
    if hw.neural_engine:
        parts.append("Apple Neural Engine")
    return "; ".join(parts)
