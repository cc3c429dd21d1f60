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

motorpool itself is imported inside the hooks and fixtures, never at the top of this module: pytest loads
this plugin in every session of an environment where motorpool is installed, and motorpool imports torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from .gaps import known_gap, validate_markers
from .targets import (Target, availability, declares, present_device_kinds, registry, select_targets, skipped_plugins,
                      unavailable_reason)

#: motorpool's cache root variable (motorpool.plugin.paths.ENV_DIR; not imported: see the module docstring)
CACHE_ENV = "MOTORPOOL_CACHE"


# -- pytest hooks ------------------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("motorpool")
    group.addoption("--motorpool-backends", default=None, metavar="NAMES",
                    help="comma-separated backends the `backend` fixture runs over "
                         "(default: all; env MOTORPOOL_TEST_BACKENDS)")
    group.addoption("--motorpool-devices", default=None, metavar="DEVICES",
                    help="comma-separated device kinds (cpu,cuda,mps,ane) the `backend` fixture runs over "
                         "(default: all; env MOTORPOOL_TEST_DEVICES)")
    group.addoption("--motorpool-user-cache", action="store_true", default=False,
                    help="let the tests read and write motorpool's own cache (default: a fresh cache per session, "
                         "removed at the end, so no test loads an engine that earlier code built)")


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
    if not config.getoption("--motorpool-user-cache", False):
        _isolate_cache(config)


def _isolate_cache(config: pytest.Config) -> None:
    """Point MOTORPOOL_CACHE at a fresh directory for the session (restored and removed at the end)."""
    previous = os.environ.get(CACHE_ENV)
    root = tempfile.mkdtemp(prefix="motorpool-test-cache-")
    os.environ[CACHE_ENV] = root

    def restore() -> None:
        if previous is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = previous
        shutil.rmtree(root, ignore_errors=True)

    config.add_cleanup(restore)


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        return header_lines()
    except Exception as exc:  # noqa: BLE001 - a header must never stop a test session
        return [f"motorpool: could not list backends: {type(exc).__name__}: {exc}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    validate_markers(metafunc.definition)
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
        pool = names or registry().names()
        if not any(all(declares(registry().get(n), c) for c in caps) for n in pool if n in registry().names()):
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
    backend = registry().get(target.name)
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
    skipped = skipped_plugins().get(target.name)
    if skipped:
        pytest.skip(skipped)
    return registry().get(target.name)


@pytest.fixture(scope="session")
def motorpool_engines():
    """A session-wide cache of compiled engines, so each (backend, device, model, precision) compiles once."""
    from .checks import EngineCache  # late, like every motorpool import here: see the module docstring

    cache = EngineCache()
    yield cache
    cache.clear()


def _target_param(request: pytest.FixtureRequest, fixture: str) -> Target:
    param = getattr(request, "param", None)
    if not isinstance(param, Target):
        raise pytest.UsageError(f"the `{fixture}` fixture is parametrized by motorpool's pytest plugin; it is "
                                "not loaded (add `-p motorpool.testing.plugin`)")
    return param


# -- report header -----------------------------------------------------------------------------------------

def header_lines() -> list[str]:
    import warnings

    import motorpool
    from ..plugin import hardware

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped plugins are listed below instead
        reg = registry()
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

