"""motorpool's pytest plugin, registered through the ``pytest11`` entry point (``-p motorpool.testing.plugin``).

What it gives a test suite:

- ``backend`` fixture: parametrized over every registered backend and each device it declares
  (ids like ``eager-cpu``, ``tensorrt-cuda``). A backend that cannot run here, a device it does not see,
  and a plugin the registry had to skip all show as SKIPPED with the backend's own reason; nothing
  vanishes. ``backend_device`` is the device of that parameter. ``registered_backend`` is parametrized
  over backends only and does not skip on availability (for checks of the availability answer itself).
- markers: ``@pytest.mark.backend("name", ...)``, ``@pytest.mark.device("cuda", ...)``,
  ``@pytest.mark.capability("int8", "thread_safe", ...)``. On a test that uses the ``backend`` fixture the
  first two narrow its parameters and the third skips those that do not declare the capability, saying so;
  on any other test they skip it unless the named backend is available / the device is present / some
  named backend declares the capability. An unknown backend, device or capability name is a collection
  error.
- known gaps, ibis style: ``@pytest.mark.notimpl(["torchscript"], reason="...", models=["gru"])`` (motorpool's
  backend could do it, nobody wrote it yet) and ``@pytest.mark.notyet([...], reason=...)`` (the runtime
  itself cannot yet). They turn the matching ``backend`` (and ``zoo_model``) parameters into strict xfails
  carrying the reason; ``checks=["test_dynamic_shapes"]`` limits a class-level gap to those checks. A reason
  is required and unknown backend names are a collection error.
- filters: ``--motorpool-backends=a,b`` or ``MOTORPOOL_TEST_BACKENDS=a,b`` (the option wins), and
  ``--motorpool-devices=cpu,cuda`` / ``MOTORPOOL_TEST_DEVICES``: parameters outside them are not generated.
- a report header listing motorpool, the hardware, and every backend with version, devices, or why not.
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
GAP_MARKERS = ("notimpl", "notyet")


@dataclass(frozen=True)
class Target:
    """One ``backend`` fixture parameter: a backend name and a device (None when the plugin is unloadable)."""

    name: str
    device: str | None

    @property
    def id(self) -> str:
        return self.name if self.device is None else f"{self.name}-{self.device}"


# -- pytest hooks ------------------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("motorpool")
    group.addoption("--motorpool-backends", default=None, metavar="NAMES",
                    help="comma-separated backends the `backend` fixture runs over "
                         "(default: all; env MOTORPOOL_TEST_BACKENDS)")
    group.addoption("--motorpool-devices", default=None, metavar="DEVICES",
                    help="comma-separated device kinds (cpu,cuda,mps,ane) the `backend` fixture runs over "
                         "(default: all; env MOTORPOOL_TEST_DEVICES)")


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "backend(*names): run only on these backends; skip with the backend's reason when unavailable",
        "device(*kinds): run only on these devices (cpu, cuda, mps, ane); skip when absent",
        "capability(*names): run only where the backend declares these (precisions, devices, "
        "dynamic_batch, dynamic_shapes, thread_safe, serializable)",
        "notimpl(backends, reason, models=None, checks=None, raises=None, strict=True): a known gap "
        "motorpool's backend has not implemented; an xfail carrying the reason",
        "notyet(backends, reason, models=None, checks=None, raises=None, strict=True): a known gap of the "
        "runtime itself; an xfail carrying the reason",
    ):
        config.addinivalue_line("markers", line)


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        return header_lines()
    except Exception as exc:  # noqa: BLE001 - a header must never stop a test session
        return [f"motorpool: could not list backends: {type(exc).__name__}: {exc}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    _validate_markers(metafunc.definition)
    config = metafunc.config
    if "backend" in metafunc.fixturenames:
        targets = select_targets(metafunc.definition, config, with_devices=True, cls=metafunc.cls)
        metafunc.parametrize("backend", targets, ids=[t.id for t in targets], indirect=True)
    elif "registered_backend" in metafunc.fixturenames:
        targets = select_targets(metafunc.definition, config, with_devices=False, cls=metafunc.cls)
        metafunc.parametrize("registered_backend", targets, ids=[t.id for t in targets], indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        target = None
        if callspec is not None:
            target = callspec.params.get("backend") or callspec.params.get("registered_backend")
        if not isinstance(target, Target):
            continue
        model = callspec.params.get("zoo_model")
        gap = known_gap(item, target.name, model, per_model_only=False)
        if gap is not None:
            item.add_marker(pytest.mark.xfail(reason=gap.describe(), raises=gap.raises, strict=gap.strict))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Markers on tests that do not use the ``backend`` fixture: skip unless what they name is here."""
    names = [n for m in item.iter_markers("backend") for n in m.args]
    uses_fixture = "backend" in getattr(item, "fixturenames", ()) or \
        "registered_backend" in getattr(item, "fixturenames", ())
    if uses_fixture:
        return
    for name in names:
        reason = unavailable_reason(name)
        if reason:
            pytest.skip(reason)
    kinds = [k for m in item.iter_markers("device") for k in m.args]
    if kinds:
        present = present_device_kinds()
        if not any(k.split(":")[0] in present for k in kinds):
            pytest.skip(f"needs a {' or '.join(kinds)} device; this machine has {', '.join(sorted(present))}")
    caps = [c for m in item.iter_markers("capability") for c in m.args]
    if caps:
        pool = names or _registry().names()
        if not any(all(declares(_registry().get(n), c) for c in caps) for n in pool if n in _registry().names()):
            pytest.skip(f"no backend among {', '.join(pool)} declares {', '.join(caps)}")


# -- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture
def backend(request: pytest.FixtureRequest):
    """The :class:`motorpool.Backend` under test, for one (backend, device) parameter.

    Skips, with the backend's own reason, when it cannot run here or does not see the device.
    """
    target = _target_param(request, "backend")
    reason = unavailable_reason(target.name, target.device)
    if reason:
        pytest.skip(reason)
    backend = _registry().get(target.name)
    missing = [c for m in request.node.iter_markers("capability") for c in m.args if not declares(backend, c)]
    if missing:
        pytest.skip(f"{target.name} does not declare {', '.join(missing)}")
    return backend


@pytest.fixture
def backend_device(request: pytest.FixtureRequest) -> str:
    """The device of the current ``backend`` parameter (``"cpu"``, ``"cuda"``, ``"mps"``...)."""
    callspec = getattr(request.node, "callspec", None)
    target = callspec.params.get("backend") if callspec is not None else None
    if not isinstance(target, Target):
        raise pytest.UsageError("`backend_device` goes with the `backend` fixture, which this test does not use")
    return target.device or "cpu"


@pytest.fixture
def registered_backend(request: pytest.FixtureRequest):
    """Every registered backend, available or not (skips only a plugin the registry could not load)."""
    target = _target_param(request, "registered_backend")
    skipped = _skipped_plugins().get(target.name)
    if skipped:
        pytest.skip(skipped)
    return _registry().get(target.name)


@pytest.fixture(scope="session")
def motorpool_engines():
    """A session-wide cache of compiled engines, so each (backend, device, model, precision) compiles once."""
    from .conformance import EngineCache

    cache = EngineCache()
    yield cache
    cache.clear()


def _target_param(request: pytest.FixtureRequest, fixture: str) -> Target:
    param = getattr(request, "param", None)
    if not isinstance(param, Target):
        raise pytest.UsageError(f"the `{fixture}` fixture is parametrized by motorpool's pytest plugin; it is "
                                "not loaded (add `-p motorpool.testing.plugin`)")
    return param


# -- what is registered and available ----------------------------------------------------------------------

def _registry():
    import motorpool

    return motorpool.get_registry()


def _skipped_plugins() -> dict[str, str]:
    """Entry points the registry skipped, by name, with why (a missing module, a bad record...)."""
    reg = _registry()
    reg.names()  # load
    return {plugin: f"plugin {plugin!r} from {dist} was skipped by motorpool: {reason}"
            for plugin, dist, reason in reg.skipped}


def declared_entry_points() -> set[str]:
    """Backend names declared as entry points, loaded or not (so a broken one is still a known name)."""
    return {ep.name for ep in importlib.metadata.entry_points(group="motorpool.backends")}


def known_backend_names() -> set[str]:
    return set(_registry().names()) | set(_skipped_plugins()) | declared_entry_points()


def availability(name: str):
    from motorpool.compile import safe_availability

    return safe_availability(_registry().get(name))


def unavailable_reason(name: str, device: str | None = None) -> str | None:
    """None if backend ``name`` can run here (on ``device``), else the reason to skip with."""
    skipped = _skipped_plugins()
    reg = _registry()
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
    from motorpool import hardware

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
    reg = _registry()
    return set(DEVICES) | {d for n in reg.names() for d in reg.get(n).capabilities.devices}


def _all_capability_names() -> set[str]:
    from motorpool import PRECISIONS

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
    reg = _registry()
    skipped = _skipped_plugins()
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


# -- markers -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gap:
    kind: str  # "notimpl" or "notyet"
    backends: tuple[str, ...]
    reason: str
    models: tuple[str, ...] | None = None
    raises: Any = None
    strict: bool = True
    #: names of the test functions (conformance checks) it applies to; None: every test it marks
    checks: tuple[str, ...] | None = None

    def describe(self) -> str:
        what = "not implemented in motorpool's backend" if self.kind == "notimpl" else \
            "not yet supported by the runtime"
        return f"{self.kind} ({what}): {self.reason}"


def _gap_from_marker(mark: pytest.Mark) -> Gap:
    if not mark.args:
        raise ValueError(f"@pytest.mark.{mark.name} needs the backend names it applies to, e.g. "
                         f"@pytest.mark.{mark.name}(['torchscript'], reason='...')")
    names = mark.args[0]
    if isinstance(names, str):
        names = [names]
    reason = mark.kwargs.get("reason") or (mark.args[1] if len(mark.args) > 1 else "")
    if not reason:
        raise ValueError(f"@pytest.mark.{mark.name}({list(names)!r}) must carry a reason=... saying why")
    models = mark.kwargs.get("models")
    if isinstance(models, str):
        models = [models]
    checks = mark.kwargs.get("checks")
    if isinstance(checks, str):
        checks = [checks]
    return Gap(mark.name, tuple(names), str(reason), tuple(models) if models else None,
               mark.kwargs.get("raises"), bool(mark.kwargs.get("strict", True)), tuple(checks) if checks else None)


def gaps(node: Any) -> list[Gap]:
    return [_gap_from_marker(m) for kind in GAP_MARKERS for m in node.iter_markers(kind)]


def known_gap(node: Any, backend: str, model: str | None, *, per_model_only: bool) -> Gap | None:
    """The gap declared on ``node`` for this backend (and zoo model), if any.

    A gap naming models applies only to parameters with one of those models (``per_model_only`` asks for
    gaps that name ``model`` explicitly: the per-backend save/load check skips such models in its loop).
    """
    test = getattr(node, "originalname", None) or getattr(node, "name", "")
    for gap in gaps(node):
        if backend not in gap.backends or (gap.checks is not None and test not in gap.checks):
            continue
        if gap.models is None:
            if per_model_only:
                continue
            return gap
        if model is not None and model in gap.models:
            return gap
    return None


def _validate_markers(node: Any) -> None:
    """Unknown names in motorpool's markers are collection errors, not silent no-ops."""
    known = None
    problems = []
    for mark in node.iter_markers():
        if mark.name == "backend" or mark.name in GAP_MARKERS:
            if known is None:
                known = known_backend_names()
            try:
                names = list(mark.args) if mark.name == "backend" else list(_gap_from_marker(mark).backends)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if not names:
                problems.append("@pytest.mark.backend() names no backend")
            unknown = sorted(set(names) - known)
            if unknown:
                problems.append(f"@pytest.mark.{mark.name} names unknown backend(s) {unknown}; known: "
                                f"{', '.join(sorted(known))}")
        elif mark.name == "device":
            kinds = device_kinds()
            bad = sorted(d for d in mark.args if d.split(":")[0] not in kinds)
            if bad or not mark.args:
                problems.append(f"@pytest.mark.device names unknown device(s) {bad}; choose from "
                                f"{', '.join(sorted(kinds))}")
        elif mark.name == "capability":
            bad = sorted(set(mark.args) - _all_capability_names())
            if bad or not mark.args:
                problems.append(f"@pytest.mark.capability names unknown capabilities {bad}; choose from "
                                f"{', '.join(sorted(_all_capability_names()))}")
    if problems:
        raise MarkerError(f"{node.nodeid}: " + "; ".join(problems))


class MarkerError(Exception):
    """A motorpool marker names something unknown; raised during collection, so pytest reports an ERROR."""


# -- report header -----------------------------------------------------------------------------------------

def header_lines() -> list[str]:
    import warnings

    import motorpool
    from motorpool import hardware

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped plugins are listed below instead
        reg = _registry()
        names = reg.names()
    hw = hardware.detect()
    lines = [f"motorpool {motorpool.__version__}: {hw.cpu.model} ({hw.cpu.cores} cores), class "
             f"{hw.hardware_class}, devices {', '.join(hw.devices)}"]
    for name in names:
        av = availability(name)
        if av.available:
            lines.append(f"  {name:14s} {av.version or '-':22s} devices {', '.join(av.devices) or '-'}")
        else:
            fix = f" (fix: {av.fix})" if av.fix else ""
            lines.append(f"  {name:14s} {av.status.value:22s} {av.reason}{fix}")
    for plugin, dist, reason in reg.skipped:
        lines.append(f"  {plugin:14s} {'plugin-skipped':22s} from {dist}: {reason}")
    return lines

