"""The files ``motorpool new-backend`` writes: a plugin distribution that passes the conformance suite as
generated (it runs the model with eager PyTorch), with every runtime call marked ``# TODO(author):``.

Templates are :class:`string.Template` s (``$name`` placeholders), so the generated code keeps its braces.
"""

from __future__ import annotations

from string import Template

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A $name backend for motorpool."
readme = "README.md"
requires-python = ">=3.10"
dependencies = [
    "motorpool>=$motorpool_version",
    # TODO(author): the distribution(s) of your runtime, e.g. "myruntime>=1.0"
]

[project.optional-dependencies]
test = ["pytest>=8"]

# The one line that makes this a motorpool backend: motorpool finds it exactly like its built-in ones.
[project.entry-points."motorpool.backends"]
$name = "$package"

[tool.setuptools]
packages = ["$package"]

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-ra"
''')

MODULE = Template('''\
"""$dist: a $name backend for motorpool.

Written only against ``motorpool.plugin``, the facade every backend imports from (built-in or not), and
found through the ``motorpool.backends`` entry point in pyproject.toml. As generated it runs the model with eager PyTorch, so it passes motorpool's
conformance suite from the start; replace each ``# TODO(author):`` with your runtime's calls, and run
``pytest`` after each step (see motorpool's docs/plugins.md).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from motorpool.plugin import (Availability, Backend, BackendRecord, Capabilities, CompileError, CompileOptions,
                              Runner, Status, UnsupportedError, hookimpl)

__version__ = "0.1.0"
__all__ = ["$cls", "${cls_prefix}Runner", "motorpool_register_backends"]

# TODO(author): the distribution your runtime ships as; availability() reports its version.
RUNTIME_DISTRIBUTION = "torch"
FIX = 'pip install "$dist"'


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class ${cls_prefix}Runner(Runner):
    """One compiled model. ``run`` takes and returns flat lists in ``native_inputs`` kind."""

    native_inputs = "torch"  # TODO(author): "numpy" if your runtime takes NumPy arrays
    # Safe default: the Engine serializes calls. Say True only when many threads may call run() at once
    # (the conformance suite then calls this runner from 8 threads with no lock, and checks every result).
    thread_safe = False

    def __init__(self, compiled: Any, *, precision: str, info: dict[str, Any]):
        self._compiled = compiled
        self.device = "cpu"
        self.precision = precision
        self.info = dict(info)

    def run(self, inputs: list[Any]) -> list[Any]:
        import torch
        import torch.utils._pytree as pytree

        # TODO(author): call your runtime here, e.g. ``return self._compiled.execute(inputs)``.
        with torch.inference_mode():
            return pytree.tree_leaves(self._compiled(*inputs))

    def save(self, directory: Path) -> dict[str, Any]:
        # TODO(author): write your runtime's artifact into ``directory`` and return what load() needs, e.g.
        #     (directory / "model.bin").write_bytes(self._compiled.serialize()); return {"file": "model.bin"}
        # then declare serializable=True in the backend's capabilities.
        raise UnsupportedError("$name cannot save its engines yet", backend="$name")


class $cls(Backend):
    name = "$name"
    description = "TODO(author): one line on what runs the model"
    capabilities = Capabilities(
        devices=("cpu",),                 # TODO(author): "cuda", "mps"... what your runtime targets
        precisions=frozenset({"fp32"}),   # TODO(author): "fp16", "bf16", "int8" once each passes the suite
        dynamic_batch=True,               # the batch dimension may change between calls
        dynamic_shapes=False,             # TODO(author): True if other named dimensions may change too
        thread_safe=False,                # TODO(author): True only if the runner is (see ${cls_prefix}Runner)
        serializable=False,               # TODO(author): True once save()/load() work
        compile_cost="low",               # "none", "low", "medium", "high" (high runs a reduced zoo)
        priority={"*": 100},              # rank for backend="auto": lower first (docs/plugins.md)
    )

    def availability(self) -> Availability:
        """Never raises: every reason this backend cannot run here is an Availability."""
        version = _version(RUNTIME_DISTRIBUTION)
        if version is None:
            return Availability(Status.NOT_INSTALLED, reason=f"{RUNTIME_DISTRIBUTION} is not installed", fix=FIX)
        # TODO(author): import your runtime here (never at module import) and ask it which devices it sees;
        # a failing import is ``Availability.import_failed(RUNTIME_DISTRIBUTION, exc, fix=FIX)``.
        return Availability.ok(version=version, devices=["cpu"], versions={RUNTIME_DISTRIBUTION: version})

    def compile(self, model, example_inputs: tuple, options: CompileOptions) -> Runner:
        problem = self.supports(precision=options.precision, device=options.device)
        if problem:
            raise UnsupportedError(problem, backend=self.name)
        try:
            # TODO(author): convert the model with your runtime. ``options.spec`` has the inputs' names,
            # shapes (a str names a dynamic dimension, e.g. "batch") and dtypes; ``options.extra`` the
            # user's backend options. A typical start:
            #     program = torch.export.export(model, example_inputs, dynamic_shapes=...)
            #     compiled = myruntime.compile(program)
            compiled = model
        except Exception as exc:  # noqa: BLE001 - the converter's message is the reason
            raise CompileError(f"$name could not compile the model: {type(exc).__name__}: {exc}",
                               backend=self.name) from exc
        return ${cls_prefix}Runner(compiled, precision=options.precision, info={"runtime": "eager PyTorch (TODO)"})

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        # TODO(author): read what ${cls_prefix}Runner.save wrote; ``metadata`` is the dict it returned.
        raise UnsupportedError("$name cannot load saved engines yet", backend=self.name)


@hookimpl
def motorpool_register_backends():
    return [BackendRecord($cls)]
''')

CONFORMANCE_TEST = Template('''\
"""motorpool's conformance suite, run against the $name backend.

Known gaps are declared, with a reason, as markers on the class, e.g.
    @pytest.mark.notyet(["$name"], models=["gru"], reason="the runtime has no GRU op")
"""

from motorpool.testing.conformance import BackendConformance

# motorpool's pytest plugin gives every test session a fresh artifact cache: no run loads an engine an
# earlier version of this code built, and none writes into your own cache


class Test$cls_prefix(BackendConformance):
    backends = ("$name",)
''')

README = Template('''\
# $dist

A [motorpool](https://pypi.org/project/motorpool/) backend named `$name`, generated by
`motorpool new-backend $name`.

```bash
pip install -e .          # registers the backend through the motorpool.backends entry point
motorpool doctor          # $name shows up with its availability
pytest                    # motorpool's conformance suite against this backend
```

As generated, the backend runs the model with eager PyTorch, so the suite passes from the start. Replace
each `# TODO(author):` in `$package/__init__.py` with your runtime's calls, one at a time, running `pytest`
after each; declare in `capabilities` only what the suite has seen pass.
''')


def render(name: str) -> dict[str, str]:
    """The distribution's files, by path relative to its root, for backend ``name``."""
    import motorpool

    cls_prefix = "".join(part.capitalize() for part in name.split("_") if part) or name.capitalize()
    values = {"name": name, "dist": f"motorpool-{name.replace('_', '-')}", "package": f"motorpool_{name}",
              "cls": f"{cls_prefix}Backend", "cls_prefix": cls_prefix,
              "motorpool_version": ".".join(motorpool.__version__.split(".")[:2])}
    return {
        "pyproject.toml": PYPROJECT.substitute(values),
        "README.md": README.substitute(values),
        f"{values['package']}/__init__.py": MODULE.substitute(values),
        "tests/test_conformance.py": CONFORMANCE_TEST.substitute(values),
    }
