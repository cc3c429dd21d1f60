"""Which (backend, device) parameters a test gets, and why one skips: the registry as the testing kit sees it
(registered, skipped plugins, availability, device kinds present, declared capabilities) and the filters
(``--motorpool-backends`` / ``--motorpool-devices``, class attributes, ``backend``/``device`` markers).

Like the rest of the pytest plugin it imports motorpool only inside its functions (see
:mod:`motorpool.testing.plugin`).
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import pytest

#: common device kinds; a ``device`` marker may also name any kind a registered backend declares
#: (OpenVINO's "gpu"/"npu", Core ML's "all"); "cuda:1" style indices are accepted too
DEVICES = ("cpu", "cuda", "mps", "ane", "xpu", "gpu", "npu")
#: boolean capability flags a ``capability`` marker may name, besides precisions and devices
FLAGS = ("dynamic_batch", "dynamic_shapes", "thread_safe", "serializable")


@dataclass(frozen=True)
class Target:
    """One ``backend`` fixture parameter: a backend name and a device (None when the plugin is unloadable)."""

    name: str
    device: str | None

    @property
    def id(self) -> str:
        return self.name if self.device is None else f"{self.name}-{self.device}"


# -- what is registered and available ----------------------------------------------------------------------

def registry():
    import motorpool

    return motorpool.get_registry()


def skipped_plugins() -> dict[str, str]:
    """Entry points the registry skipped, by name, with why (a missing module, a bad record...)."""
    reg = registry()
    reg.names()  # load
    return {plugin: f"plugin {plugin!r} from {dist} was skipped by motorpool: {reason}"
            for plugin, dist, reason in reg.skipped}


def declared_entry_points() -> set[str]:
    """Backend names declared as entry points, loaded or not (so a broken one is still a known name)."""
    return {ep.name for ep in importlib.metadata.entry_points(group="motorpool.backends")}


def known_backend_names() -> set[str]:
    return set(registry().names()) | set(skipped_plugins()) | declared_entry_points()


def availability(name: str):
    from ..plugin.registry import safe_availability

    return safe_availability(registry().get(name))


def unavailable_reason(name: str, device: str | None = None) -> str | None:
    """None if backend ``name`` can run here (on ``device``), else the reason to skip with."""
    skipped = skipped_plugins()
    reg = registry()
    if name not in reg.names():
        return skipped.get(name) or (f"no loaded plugin registers backend {name!r}: install its distribution, "
                                     "or check MOTORPOOL_PLUGINS / MOTORPOOL_BLOCK_PLUGINS "
                                     "(`motorpool doctor` lists what is installed)")
    av = availability(name)
    if not av.available:
        text = f"{name} is not available: {av.reason or av.status.value}"
        return text + (f" (fix: {av.fix})" if av.fix else "")
    if device is not None:
        kind = device.split(":")[0]
        seen = [d for d in av.devices if d == device or d.split(":")[0] == kind]
        if not seen:
            return f"{name} sees no {device} device here (it sees {', '.join(av.devices) or 'none'})"
    return None


def present_device_kinds() -> set[str]:
    from ..plugin import hardware

    return {d.split(":")[0] for d in hardware.detect().devices}


def declares(backend, capability: str) -> bool:
    caps = backend.capabilities
    if capability in FLAGS:
        return bool(getattr(caps, capability))
    if capability in caps.precisions:
        return True
    return capability in caps.devices


def device_kinds() -> set[str]:
    """Every device kind a marker may name: the common ones and whatever a registered backend declares."""
    reg = registry()
    return set(DEVICES) | {d for n in reg.names() for d in reg.get(n).capabilities.devices}


def all_capability_names() -> set[str]:
    from .. import PRECISIONS

    return set(FLAGS) | set(PRECISIONS) | device_kinds()


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def backend_filter(config: pytest.Config) -> list[str] | None:
    return _split(config.getoption("--motorpool-backends", None) or os.environ.get("MOTORPOOL_TEST_BACKENDS"))


def device_filter(config: pytest.Config) -> list[str] | None:
    return _split(config.getoption("--motorpool-devices", None) or os.environ.get("MOTORPOOL_TEST_DEVICES"))


def select_targets(node: Any, config: pytest.Config, *, with_devices: bool, cls: type | None = None
                   ) -> list[Target]:
    """The (backend, device) parameters for one test, after markers, class attributes and filters."""
    reg = registry()
    skipped = skipped_plugins()
    names = list(reg.names()) + [n for n in skipped if n not in reg.names()]
    wanted = backend_filter(config)
    if wanted is not None:
        unknown = set(wanted) - known_backend_names()
        if unknown:
            raise pytest.UsageError(f"--motorpool-backends / MOTORPOOL_TEST_BACKENDS name unknown backends "
                                    f"{sorted(unknown)}; registered: {', '.join(sorted(known_backend_names()))}")
        names = [n for n in names if n in wanted]
    restrict = getattr(cls, "backends", None) if cls is not None else None
    if restrict:
        # a backend the class asks for by name stays visible even when no plugin provides it: it skips
        names = [n for n in names if n in restrict] + [
            n for n in restrict if n not in names and (wanted is None or n in wanted)]
    marked = [n for m in node.iter_markers("backend") for n in m.args]
    if marked:
        names = [n for n in names if n in marked]
    if not with_devices:
        return [Target(n, None) for n in names]
    devices_wanted = device_filter(config)
    marked_devices = [d.split(":")[0] for m in node.iter_markers("device") for d in m.args]
    targets = []
    for n in names:
        if n not in reg.names():  # an unloadable plugin: one parameter that skips with the registry's reason
            targets.append(Target(n, None))
            continue
        b = reg.get(n)
        for dev in b.capabilities.devices:
            if devices_wanted is not None and dev not in devices_wanted:
                continue
            if marked_devices and dev not in marked_devices:
                continue
            targets.append(Target(n, dev))
    return targets
