"""The backend registry: a pluggy plugin manager over the entry-point group ``motorpool.backends``.

Plugins load on first use (``list_backends()``, ``compile``...), never at ``import motorpool``. A broken
plugin is reported with its distribution's name and skipped. Operators control loading with:

- ``MOTORPOOL_DISABLE_PLUGIN_AUTOLOAD=1``: load no third-party plugin; the built-in backends stay;
- ``MOTORPOOL_PLUGINS=a,b``: of the third-party plugins, load only these (by entry point or distribution name);
- ``MOTORPOOL_BLOCK_PLUGINS=c,d``: never load these, built-in or not (block a built-in by its name).

A name in either list that no installed plugin has is warned about (:class:`PluginWarning`) with the names
that exist. ``Registry(autoload=False)`` starts empty, for registering backends by hand.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .backend_table import BackendTable
from .contract import Availability, Backend, BackendRecord
from .errors import DuplicateBackendError, PluginError, PluginWarning, UnknownBackendError

ENTRY_POINT_GROUP = "motorpool.backends"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Registered:
    record: BackendRecord
    provider: str  # "distribution 1.2 (entry point 'x')" or whatever registered it by hand
    distribution: str = ""  # "name==version" of the installed distribution that provides it, when known

    @property
    def name(self) -> str:
        return self.record.name


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """Backends by name. Use :func:`get_registry` for the process-wide one; tests build their own."""

    def __init__(self, *, autoload: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._autoload = autoload
        self._loaded = False
        self._lock = threading.RLock()
        self._backends: dict[str, Registered] = {}
        self._instances: dict[str, Backend] = {}
        #: plugins skipped on load, as (plugin, distribution, reason)
        self.skipped: list[tuple[str, str, str]] = []

    # -- loading ------------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            if self._autoload:
                self.load_entry_points(third_party=not _truthy("MOTORPOOL_DISABLE_PLUGIN_AUTOLOAD"))

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP, *, third_party: bool = True) -> None:
        """Load the entry points of ``group``: the built-in backends, and (``third_party``) the others,
        filtered by ``MOTORPOOL_PLUGINS`` and ``MOTORPOOL_BLOCK_PLUGINS``."""
        allow = _env_list("MOTORPOOL_PLUGINS")
        block = _env_list("MOTORPOOL_BLOCK_PLUGINS") or set()
        eps = sorted(importlib.metadata.entry_points(group=group),
                     key=lambda ep: (not _is_builtin(ep), ep.name))  # built-ins first: they keep their names
        _warn_unknown_names(eps, allow, block)
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            version = f"{dist}=={ep.dist.version}" if ep.dist is not None else ""
            keys = {ep.name, dist}
            if keys & block:
                continue
            if not _is_builtin(ep) and (not third_party or (allow is not None and not keys & allow)):
                continue
            provider = f"{dist} (entry point {ep.name!r} = {ep.value!r})"
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must never break motorpool
                self._skip(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}")
                continue
            self.register_plugin(plugin, name=ep.name, provider=provider, dist=dist, strict=False,
                                 distribution=version)

    def register_plugin(self, plugin: Any, *, name: str | None = None, provider: str | None = None,
                        dist: str = "", strict: bool = True, distribution: str = "") -> list[str]:
        """Register a plugin object (a module or instance with hook implementations).

        With ``strict`` a bad record or a duplicate name raises; otherwise it is warned and skipped.
        Returns the backend names added.
        """
        with self._lock:
            plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
            provider = provider or plugin_name
            if self.pm.is_registered(plugin) or self.pm.has_plugin(plugin_name):
                return []
            try:
                self.pm.register(plugin, name=plugin_name)
                self.pm.check_pending()  # pluggy reports a misspelled hook name only when asked
            except Exception as exc:  # noqa: BLE001 - pluggy validation errors, e.g. a misspelled hook
                if self.pm.is_registered(plugin):
                    self.pm.unregister(plugin)
                return self._fail(strict, plugin_name, dist, f"invalid plugin: {exc}", PluginError)
            hook = self.pm.subset_hook_caller("motorpool_register_backends",
                                              remove_plugins=[p for p in self.pm.get_plugins() if p is not plugin])
            try:
                results = hook()
                found = [list(r) for r in results if r is not None]
            except Exception as exc:  # noqa: BLE001
                self.pm.unregister(plugin)
                return self._fail(strict, plugin_name, dist,
                                  f"motorpool_register_backends raised {type(exc).__name__}: {exc}", PluginError)
            staged: list[Registered] = []
            for batch in found:
                for rec in batch:
                    problem = _bad_record(rec)
                    if problem:
                        self.pm.unregister(plugin)
                        return self._fail(strict, plugin_name, dist, problem, PluginError)
                    staged.append(Registered(rec, provider, distribution))
            for reg in staged:
                other = self._backends.get(reg.name) or next(
                    (s for s in staged if s is not reg and s.name == reg.name), None)
                if other is not None:
                    self.pm.unregister(plugin)
                    err = DuplicateBackendError(reg.name, other.provider, reg.provider)
                    if strict:
                        raise err
                    self._skip(plugin_name, dist, str(err))
                    return []
            for reg in staged:
                self._backends[reg.name] = reg
            return [r.name for r in staged]

    def register(self, backend: type[Backend], *, provider: str = "registered by hand") -> None:
        """Register one backend class directly (tests, notebooks). A taken name raises, naming both."""
        with self._lock:
            self._ensure_loaded()
            rec = BackendRecord(backend)
            problem = _bad_record(rec)
            if problem:
                raise PluginError(problem)
            if rec.name in self._backends:
                raise DuplicateBackendError(rec.name, self._backends[rec.name].provider, provider)
            self._backends[rec.name] = Registered(rec, provider)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._backends.pop(name, None)
            self._instances.pop(name, None)

    def _fail(self, strict: bool, plugin: str, dist: str, reason: str, exc_type: type[Exception]) -> list[str]:
        if strict:
            raise exc_type(f"plugin {plugin!r}: {reason}")
        self._skip(plugin, dist, reason)
        return []

    def _skip(self, plugin: str, dist: str, reason: str) -> None:
        self.skipped.append((plugin, dist, reason))
        warnings.warn(f"motorpool: skipped plugin {plugin!r} from distribution {dist!r}: {reason}",
                      PluginWarning, stacklevel=3)

    # -- lookup ---------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        self._ensure_loaded()
        return list(self._backends)

    def provider(self, name: str) -> str:
        self._ensure_loaded()
        return self._backends[name].provider if name in self._backends else ""

    def distribution(self, name: str) -> str:
        """``name==version`` of the distribution that provides backend ``name`` ("" when registered by hand)."""
        self._ensure_loaded()
        return self._backends[name].distribution if name in self._backends else ""

    def get(self, name: str) -> Backend:
        """The backend instance registered under ``name``; an unknown name lists the valid ones."""
        self._ensure_loaded()
        with self._lock:
            if name not in self._backends:
                raise UnknownBackendError(name, sorted(self._backends))
            if name not in self._instances:
                self._instances[name] = self._backends[name].record.backend()
            return self._instances[name]

    def backends(self) -> list[Backend]:
        return [self.get(n) for n in self.names()]

    def why_empty(self) -> str:
        """Why no backend is registered, in a sentence: the switches that are set, the plugins skipped."""
        parts = []
        if not self._autoload:
            parts.append("this registry does not load entry points (Registry(autoload=False)); register backends "
                         "by hand")
        for var in ("MOTORPOOL_BLOCK_PLUGINS", "MOTORPOOL_PLUGINS", "MOTORPOOL_DISABLE_PLUGIN_AUTOLOAD"):
            if os.environ.get(var):
                parts.append(f"{var}={os.environ[var]}")
        parts += [f"plugin {plugin!r} ({dist}) was skipped: {reason}" for plugin, dist, reason in self.skipped]
        return "; ".join(parts) or "no plugin provides one (is motorpool installed? pip install -e .)"


def _is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
    return ep.value.startswith("motorpool.backends.")


def _warn_unknown_names(eps, allow: set[str] | None, block: set[str]) -> None:
    """A typo in MOTORPOOL_PLUGINS / MOTORPOOL_BLOCK_PLUGINS says so instead of silently changing nothing."""
    known = {ep.name for ep in eps} | {ep.dist.name for ep in eps if ep.dist is not None}
    for var, names in (("MOTORPOOL_PLUGINS", allow or set()), ("MOTORPOOL_BLOCK_PLUGINS", block)):
        unknown = sorted(names - known)
        if unknown:
            warnings.warn(f"motorpool: {var} names {', '.join(unknown)}, which no installed plugin provides; "
                          f"installed: {', '.join(sorted(known))}", PluginWarning, stacklevel=4)


def _bad_record(rec: Any) -> str | None:
    if not isinstance(rec, BackendRecord):
        return f"motorpool_register_backends returned {rec!r}, expected motorpool.BackendRecord"
    cls = rec.backend
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        return f"{cls!r} is not a subclass of motorpool.Backend"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        return f"{cls.__name__}.name must be a lower-case identifier, got {name!r}"
    if getattr(cls, "__abstractmethods__", None):
        return f"{cls.__name__} leaves abstract methods unimplemented: {sorted(cls.__abstractmethods__)}"
    if not hasattr(cls, "capabilities"):
        return f"{cls.__name__} declares no capabilities"
    return None


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, created (and its plugins loaded) on first use."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = Registry()
    return _registry


def set_registry(registry: Registry | None) -> Registry | None:
    """Swap the process-wide registry (tests); returns the previous one. ``None`` resets to a fresh one."""
    global _registry
    with _registry_lock:
        previous, _registry = _registry, registry
    return previous


@dataclass(frozen=True)
class BackendInfo:
    """One row of :func:`list_backends`."""

    name: str
    available: bool
    status: str
    reason: str
    fix: str | None
    version: str | None
    devices: tuple[str, ...]
    can_export: bool
    provider: str
    capabilities: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, devices=list(self.devices))


def list_backends() -> list[BackendInfo]:
    """Every registered backend, available or not, with why not and how to fix it."""
    reg = get_registry()
    rows = []
    for name in reg.names():
        backend = reg.get(name)
        av = safe_availability(backend)
        rows.append(BackendInfo(name, av.available, av.status.value, av.reason, av.fix, av.version, av.devices,
                                av.can_export, reg.provider(name), backend.capabilities.to_dict()))
    return BackendTable(rows)


def safe_availability(backend: Backend) -> Availability:
    """``backend.availability()``, with a misbehaving plugin's exception turned into an answer."""
    try:
        av = backend.availability()
        if not isinstance(av, Availability):
            raise TypeError(f"availability() returned {type(av).__name__}, expected motorpool.Availability")
        return av
    except Exception as exc:  # noqa: BLE001 - the contract says never raise; hold plugins to it here
        return Availability.import_failed(backend.name, exc, fix="report this to the backend's authors")
