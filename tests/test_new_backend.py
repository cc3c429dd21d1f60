"""``motorpool new-backend``: the scaffold it writes is a plugin distribution that passes the conformance suite
as generated, its entry point is the one pyproject declares, and usage errors exit 2 with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest

from motorpool.cli import main

NAME = "scaffoldtoy"


def _install_metadata(root, site):
    """What ``pip install -e`` would leave: a .dist-info whose entry points are read from the generated pyproject."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    eps = project["entry-points"]["motorpool.backends"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = "\n".join(f"{k} = {v}" for k, v in eps.items())
    (info / "entry_points.txt").write_text(f"[motorpool.backends]\n{lines}\n")
    return eps


@pytest.fixture(scope="module")
def scaffold(tmp_path_factory):
    root = tmp_path_factory.mktemp("new") / "motorpool-scaffoldtoy"
    assert main(["new-backend", NAME, "--dir", str(root)]) == 0
    return root


def test_writes_a_distribution_with_the_entry_point_and_todo_marks(scaffold):
    files = sorted(str(p.relative_to(scaffold)) for p in scaffold.rglob("*") if p.is_file())
    assert files == ["README.md", "motorpool_scaffoldtoy/__init__.py", "pyproject.toml", "tests/test_conformance.py"]
    project = tomllib.loads((scaffold / "pyproject.toml").read_text())["project"]
    assert project["name"] == "motorpool-scaffoldtoy"
    assert project["entry-points"]["motorpool.backends"] == {NAME: "motorpool_scaffoldtoy"}
    module = (scaffold / "motorpool_scaffoldtoy" / "__init__.py").read_text()
    assert module.count("# TODO(author):") >= 6
    assert "pip install \"motorpool-scaffoldtoy\"" in module
    compile(module, "motorpool_scaffoldtoy/__init__.py", "exec")  # valid Python


def test_the_scaffold_passes_the_conformance_suite_as_generated(scaffold, tmp_path):
    """Its own tests, in a pytest subprocess that finds it through its entry point, as after pip install -e."""
    site = tmp_path / "site"
    _install_metadata(scaffold, site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(scaffold)]),
           # only the scaffold loads: the report header would otherwise import every runtime
           "MOTORPOOL_PLUGINS": NAME, "MOTORPOOL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"], cwd=scaffold,
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = out.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|xfailed|skipped)", summary)}
    assert not set(counts) - {"passed", "skipped"}, summary
    # skipped are only the precisions and capabilities the scaffold does not declare
    assert counts.get("passed", 0) >= 40, summary
    skips = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("does not declare" in line for line in skips), "\n".join(skips)


def test_the_scaffold_registers_through_a_fresh_registry(scaffold, tmp_path, monkeypatch):
    """In process: the generated module's hook gives a backend the registry accepts, available here."""
    import motorpool

    monkeypatch.syspath_prepend(str(scaffold))
    import importlib

    module = importlib.import_module("motorpool_scaffoldtoy")
    registry = motorpool.Registry(autoload=False)
    registry.register_plugin(module, name=NAME)
    backend = registry.get(NAME)
    assert backend.availability().available
    assert not backend.capabilities.thread_safe and not backend.capabilities.serializable  # safe defaults


@pytest.mark.parametrize("argv, message", [
    (["new-backend", "My-Backend"], "NAME 'My-Backend' is not a backend name"),
    (["new-backend", "9lives"], "NAME '9lives' is not a backend name"),
    (["new-backend", "eager"], "NAME 'eager' is already a registered backend"),
])
def test_a_bad_name_is_a_usage_error(argv, message, capsys, tmp_path):
    assert main(argv + ["--dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_an_existing_directory_is_a_usage_error_and_is_left_alone(capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["new-backend", NAME, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dir" in err and "already exists" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
