"""Meta-tests that keep the design honest.

- every hook in ``motorpool.hookspecs`` is documented (docstring with an example, a section in
  docs/plugins.md) and tested (called through a real plugin manager here, named in the tests);
- every backend class matches the signatures of the :class:`motorpool.Backend` base;
- every module of ``motorpool`` and ``motorpool.backends`` imports on its own in a fresh interpreter, and
  importing it pulls in no heavy runtime (those belong inside ``availability``/``compile``/``load``).
"""

from __future__ import annotations

import inspect
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import motorpool
import motorpool.backends
from motorpool.plugin import hookspecs

ROOT = Path(__file__).resolve().parents[1]
#: runtimes that must never be imported by importing a motorpool module
HEAVY = ("onnxruntime", "openvino", "coremltools", "torch_tensorrt", "tensorrt", "nncf", "iree.runtime",
         "iree.compiler", "iree.turbine")


def hook_names() -> list[str]:
    return sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                  if hasattr(fn, f"{hookspecs.PROJECT}_spec"))


def all_modules() -> list[str]:
    names = ["motorpool", "motorpool.backends"]
    for pkg in (motorpool, motorpool.backends):
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                  if not m.name.endswith(".__main__")]  # running the CLI is not importing it
    return sorted(set(names))


# -- hooks ---------------------------------------------------------------------------------------------------

def test_there_are_hooks():
    assert hook_names(), "motorpool.hookspecs declares no hook"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.split()) >= 20, f"{hook}'s docstring is its contract; it has {len(doc.split())} words"
    assert "Example" in doc, f"{hook}'s docstring has no worked example"
    plugins_doc = (ROOT / "docs" / "plugins.md").read_text()
    assert f"`{hook}`" in plugins_doc, f"docs/plugins.md does not document {hook}"


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_tested(hook):
    # datasette's rule: a hook no test calls is a hook whose contract can drift.
    mentions = [p.name for p in (ROOT / "tests").glob("test_*.py")
                if p.name != "test_meta.py" and hook in p.read_text()]
    assert mentions, f"no test under tests/ implements or calls {hook}"


def test_register_backends_hook_is_called_through_a_fresh_plugin_manager(monkeypatch):
    from motorpool.backends.eager import EagerBackend

    class Plugin:
        @motorpool.hookimpl
        def motorpool_register_backends(self):
            return [motorpool.BackendRecord(type("MetaBackend", (EagerBackend,), {"name": "meta_backend"}))]

    reg = motorpool.Registry(autoload=False)
    assert reg.register_plugin(Plugin(), name="meta") == ["meta_backend"]
    assert reg.names() == ["meta_backend"]
    assert reg.get("meta_backend").availability().available


def test_hookimpl_with_a_misspelled_hook_name_is_rejected(monkeypatch):
    class Typo:
        @motorpool.hookimpl
        def motorpool_register_backend(self):  # missing "s"
            return []

    reg = motorpool.Registry(autoload=False)
    with pytest.raises(motorpool.PluginError, match="motorpool_register_backend"):
        reg.register_plugin(Typo(), name="typo")


# -- backend signatures --------------------------------------------------------------------------------------

def backend_classes():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", motorpool.PluginWarning)
        reg = motorpool.get_registry()
        return [pytest.param(type(reg.get(n)), id=n) for n in reg.names()]


@pytest.mark.parametrize("cls", backend_classes())
@pytest.mark.parametrize("method", ["availability", "compile", "load"])
def test_backend_matches_base_signatures(cls, method):
    base = inspect.signature(getattr(motorpool.Backend, method))
    mine = inspect.signature(getattr(cls, method))
    shape = [(p.name, p.kind) for p in base.parameters.values()]
    assert [(p.name, p.kind) for p in mine.parameters.values()] == shape, \
        f"{cls.__module__}.{cls.__name__}.{method}{mine} does not match Backend.{method}{base}"
    assert not getattr(getattr(cls, method), "__isabstractmethod__", False), f"{cls.__name__}.{method} is abstract"


@pytest.mark.parametrize("cls", backend_classes())
def test_backend_declares_what_the_contract_asks(cls):
    assert isinstance(cls.name, str) and cls.name == cls.name.lower()
    assert isinstance(cls.capabilities, motorpool.Capabilities)
    assert cls.__doc__ or cls.description or inspect.getmodule(cls).__doc__, f"{cls.__name__} says nothing about itself"


# -- every module imports on its own -------------------------------------------------------------------------

# A clean interpreter imports the third-party libraries motorpool always needs once, then forks one child
# per module: each child starts with no motorpool module loaded, exactly as a fresh interpreter would,
# without paying torch's import once per module. Where fork is missing, each module gets its own process.
_IMPORTER = textwrap.dedent("""
    import importlib, json, os, sys, traceback
    modules, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    import numpy, pluggy, torch  # noqa: F401 - motorpool's own dependencies, preloaded for speed
    results = {}
    for name in modules:
        if not hasattr(os, "fork"):
            break
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                importlib.import_module(name)
                loaded = sorted(h for h in heavy if h in sys.modules)
                msg = f"heavy runtimes imported at module import: {loaded}" if loaded else ""
            except BaseException:
                msg = traceback.format_exc()
            os.write(w, msg.encode())
            os._exit(0)
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        results[name] = b"".join(chunks).decode()
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def import_results():
    modules = all_modules()
    proc = subprocess.run([sys.executable, "-c", _IMPORTER, json.dumps(modules), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in modules:
        if name not in results:  # no fork here: a real fresh interpreter per module
            check = (f"import importlib, sys; importlib.import_module({name!r}); "
                     f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))")
            p = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
            results[name] = p.stderr[-3000:] if p.returncode else (
                "" if p.stdout.strip() == "[]" else f"heavy runtimes imported at module import: {p.stdout}")
    return results


def test_module_list_is_complete():
    names = all_modules()
    assert "motorpool.plugin.registry" in names and "motorpool.backends.eager" in names
    assert "motorpool.testing.conformance" in names and "motorpool.testing.plugin" in names


@pytest.mark.parametrize("module", all_modules())
def test_module_imports_on_its_own(import_results, module):
    assert import_results[module] == "", f"importing {module} in a fresh interpreter: {import_results[module]}"


def test_import_motorpool_loads_no_plugin():
    code = ("import sys, motorpool; "
            "print(sorted(m for m in sys.modules if m.startswith('motorpool.backends.') or m == 'motorpool_iree'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"import motorpool loaded plugins: {proc.stdout}"
