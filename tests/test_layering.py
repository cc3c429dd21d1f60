"""The layering of motorpool's own code, stated as a test (docs/architecture.md draws it).

Imports run one way: the front doors (``compile``, ``export``, ``ray``, the package ``__init__``, ``cli``, ``testing``)
-> ``measuring`` -> ``selection`` -> ``techniques`` | ``serving`` -> ``pipeline`` -> ``engine`` -> ``plugin``.
``techniques`` and ``serving`` sit side by side and do not import each other. Built-in backends import only
the ``motorpool.plugin`` facade (and their own helper modules), exactly like a third-party plugin; core never
imports a backend. Every import counts, the ones inside functions too, and the whole graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"_version": 0, "plugin": 0, "engine": 1, "pipeline": 2, "techniques": 3, "serving": 3, "selection": 4,
        "measuring": 5}
TOP = 6  # compile, export, ray, the package itself, cli, testing


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = (["motorpool"] + list(rel.parts[1:])) if rel.parts[0] == "core" else (["motorpool"] + list(rel.parts))
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = sorted((ROOT / "core").rglob("*.py")) + sorted((ROOT / "backends").rglob("*.py"))
    return {_module_name(p): p for p in files}


MODULES = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path | None = None) -> set[str]:
    """The motorpool modules ``name`` imports (at module level or inside functions; not under TYPE_CHECKING)."""
    path = path or MODULES[name]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "motorpool")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "motorpool":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            found.update(subs or [target])
    return {m for m in found if m != name}


def layer(name: str) -> tuple[int, str]:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in ("compile", "export", "ray", "cli", "testing"):
        return TOP, "front"
    if parts[1] == "backends":
        return TOP, "backends"
    return RANK[parts[1]], parts[1]


def test_every_core_module_is_in_a_layer():
    for name in MODULES:
        parts = name.split(".")
        if len(parts) > 1 and parts[1] not in ("compile", "export", "ray", "cli", "testing", "backends"):
            assert parts[1] in RANK, f"{name}: core/{parts[1]} is in no layer; add it to RANK and docs/architecture.md"


def upward_imports(name: str, path: Path | None = None) -> list[str]:
    """Every import of core module ``name`` that breaks the layering, as a sentence."""
    rank, pkg = layer(name)
    problems = []
    for target in sorted(imports_of(name, path)):
        if target.startswith("motorpool.backends"):
            problems.append(f"{name} imports the backend {target}: core must not")
        elif target == "motorpool":
            if rank != TOP:
                problems.append(f"{name} imports the motorpool package itself: import the module it needs")
        else:
            t_rank, t_pkg = layer(target)
            if t_pkg not in (pkg, "_version") and t_rank >= rank:
                problems.append(f"{name} ({pkg}, layer {rank}) imports {target} ({t_pkg}, layer {t_rank}): "
                                "imports must run down the layers (see docs/architecture.md)")
    return problems


@pytest.mark.parametrize("name", [m for m in MODULES if not m.startswith("motorpool.backends")])
def test_core_imports_run_one_way(name):
    assert upward_imports(name) == []


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("motorpool.backends")])
def test_backends_import_only_the_plugin_facade(name):
    own = ".".join(name.split(".")[:3])
    for target in sorted(imports_of(name)):
        assert target == "motorpool.plugin" or target.startswith(own + ".") or target == own, (
            f"{name} imports {target}: a backend imports motorpool only through the motorpool.plugin facade")


def test_the_import_graph_has_no_cycle():
    graph = {name: imports_of(name) & set(MODULES) for name in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_checker_sees_function_level_imports(tmp_path):
    """A function-level import that runs upward is caught like a module-level one; TYPE_CHECKING is not."""
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..engine import engine\n"
                     "def f():\n    from ..selection import fastest\n")
    problems = upward_imports("motorpool.plugin.probe", probe)
    assert len(problems) == 1 and "motorpool.selection.fastest" in problems[0]
