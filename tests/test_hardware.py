"""Hardware detection: CPU model and ISA features, GPUs, the hardware class and the fingerprint."""

import json

import pytest

from motorpool.plugin import hardware
from motorpool.plugin.hardware import CPUInfo, GPUInfo, Hardware

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_int8 amx_tile
processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu
"""

GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp sve i8mm bf16
CPU implementer\t: 0x41
CPU architecture: 8
"""


def test_parse_x86_cpuinfo_names_the_inference_features():
    vendor, model, flags = hardware.parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert vendor == "GenuineIntel" and model.startswith("Intel(R) Xeon(R) Platinum 8481C")
    features = hardware.isa_features(flags, "x86_64")
    for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"):
        assert f in features
    assert "fpu" not in features  # only what matters for inference is named


def test_parse_arm_cpuinfo():
    vendor, _, flags = hardware.parse_cpuinfo(GRAVITON3)
    assert vendor == "ARM"
    assert hardware.isa_features(flags, "aarch64") == ("bf16", "dotprod", "fp16", "i8mm", "neon", "sve")


@pytest.mark.parametrize("hw, cls, devices", [
    (Hardware(CPUInfo("GenuineIntel", "Xeon", "x86_64", 8), (GPUInfo(0, "NVIDIA H100", "cuda", "9.0", 80.0),)),
     "nvidia", ["cpu", "cuda:0"]),
    (Hardware(CPUInfo("Apple", "Apple M3", "arm64", 8), (GPUInfo(0, "Apple GPU (MPS)", "mps"),),
              apple_silicon=True, neural_engine=True), "apple", ["cpu", "mps", "ane"]),
    (Hardware(CPUInfo("GenuineIntel", "Xeon", "x86_64", 2)), "cpu", ["cpu"]),  # the vendor is no class
    (Hardware(CPUInfo("AuthenticAMD", "EPYC", "x86_64", 2)), "cpu", ["cpu"]),
    (Hardware(CPUInfo("ARM", "Neoverse", "aarch64", 4)), "cpu", ["cpu"]),
    (Hardware(CPUInfo("GenuineIntel", "Core Ultra", "x86_64", 8), (GPUInfo(0, "Intel Arc", "xpu"),)),
     "cpu", ["cpu", "xpu:0"]),
])
def test_hardware_class_and_devices(hw, cls, devices):
    assert hw.hardware_class == cls and cls in hardware.HARDWARE_CLASSES
    assert hw.devices == devices


def test_fingerprint_depends_on_what_decides_how_artifacts_run():
    base = Hardware(CPUInfo("GenuineIntel", "Xeon", "x86_64", 2, ("avx2",)), os="Linux 6.1")
    same = Hardware(CPUInfo("GenuineIntel", "Xeon", "x86_64", 64, ("avx2",)), os="Linux 6.8")  # cores, kernel
    other_isa = Hardware(CPUInfo("GenuineIntel", "Xeon", "x86_64", 2, ("avx2", "amx_bf16")), os="Linux 6.1")
    with_gpu = Hardware(base.cpu, (GPUInfo(0, "NVIDIA L4", "cuda", "8.9", 22.0),), os="Linux 6.1")
    fp = hardware.fingerprint_of
    assert fp(base) == fp(same) and fp(base).startswith("linux-x86_64-")
    assert len({fp(base), fp(other_isa), fp(with_gpu)}) == 3


def test_detect_this_machine_is_cached_and_serializable():
    hw = hardware.detect()
    assert hardware.detect() is hw  # once per process
    assert hw.cpu.cores >= 1 and hw.cpu.arch and hw.cpu.vendor
    d = hw.to_dict()
    json.dumps(d)
    assert d["hardware_class"] == hw.hardware_class and d["fingerprint"] == hardware.fingerprint()
    assert "cpu" in d["devices"] and hardware.summary()


def test_doctor_shows_the_hardware(capsys):
    from motorpool.cli import main

    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    hw = data["hardware"]
    assert hw["fingerprint"] == hardware.fingerprint() and hw["hardware_class"] == hardware.detect().hardware_class
    assert hw["cpu"]["features"] == list(hardware.detect().cpu.features)
    assert isinstance(data["backend_devices"], dict) and "eager" in data["backend_devices"]
    assert "eager" in data["auto_order"]
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert f"fingerprint {hardware.fingerprint()}" in text and "auto     " in text
