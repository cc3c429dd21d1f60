"""Every ```python block in README.md and docs/*.md runs as written, so the docs cannot drift from the code.

Each block runs in a fresh namespace in its own child process (a fresh registry, and an artifact cache in
a temporary directory). Names a block uses without
defining them (``MyModel``, ``model``, ``x``, ``example_inputs``, ``engine``...) come from a prelude of small
stand-ins built on :mod:`motorpool.testing.zoo`, only those the block needs. A block with top-level ``await``
runs in an event loop. ``backend="auto"``/``"fastest"`` choose among eager and ONNX Runtime plus every
backend the block names in a string literal (so ``"fastest"`` does not compile every installed runtime).

A block that needs what this machine lacks is marked in the document, on the line before the fence::

    <!-- snippet: skip needs an NVIDIA GPU -->
    <!-- snippet: xfail issue-16: what is wrong in the code -->

and is skipped (xfailed) with that reason; any other ``snippet:`` comment is an error.
"""

from __future__ import annotations

import ast
import builtins
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^<!--\s*snippet:\s*(?P<kind>\S+)\s*(?P<reason>.*?)\s*-->$")
FENCE = re.compile(r"^```python\s*$")
#: the backends auto/fastest may pick from in a snippet, beside those the document names
BASE_BACKENDS = ("eager", "onnxruntime")
BUILTIN_BACKENDS = ("eager", "torchscript", "torch_compile", "onnxruntime", "openvino", "tensorrt", "coreml")
#: snippets run this many at a time (each on one thread): the docs' run is the suite's longest part
PARALLEL = 2
SNIPPET_TIMEOUT_S = 420

#: stand-ins for names the docs use without defining: (name, code, names it needs first)
PRELUDE: list[tuple[str, str, tuple[str, ...]]] = [
    ("torch", "import torch", ()),
    ("np", "import numpy as np", ()),
    ("motorpool", "import motorpool", ()),
    ("pytest", "import pytest", ()),
    ("MyModel", "from motorpool.testing.zoo import SmallCNN as MyModel", ()),
    ("model", "torch.manual_seed(0); model = MyModel().eval()", ("torch", "MyModel")),
    ("x", "x = torch.randn(4, 3, 32, 32)", ("torch",)),
    ("example", "example = torch.randn(4, 3, 32, 32)", ("torch",)),
    ("example_inputs", "example_inputs = (torch.randn(4, 3, 32, 32),)", ("torch",)),
    ("batch1", "batch1 = torch.randn(4, 3, 32, 32)", ("torch",)),
    ("batch2", "batch2 = torch.randn(4, 3, 32, 32)", ("torch",)),
    ("batch3", "batch3 = torch.randn(4, 3, 32, 32)", ("torch",)),
    ("x_val", "x_val = torch.randn(32, 3, 32, 32)", ("torch",)),
    ("y_val", "with torch.no_grad():\n    y_val = model(x_val).argmax(1)", ("model", "x_val")),
    ("val_batches", "val_batches = [x_val]", ("x_val",)),
    ("val_labels", "val_labels = [y_val]", ("y_val",)),
    ("samples", "samples = [torch.randn(3, 32, 32) for _ in range(40)]", ("torch",)),
    ("train_one_epoch", "def train_one_epoch(model, step):\n    return model", ()),
    ("engine", "engine = motorpool.compile(model, x, backend='eager')", ("motorpool", "model", "x")),
    ("batcher", "batcher = motorpool.DynamicBatcher(engine)", ("engine",)),
]
PRELUDE_BY_NAME = {name: (code, deps) for name, code, deps in PRELUDE}


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int
    code: str
    kind: str | None = None  # None, "skip" or "xfail"
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def snippets(doc: Path) -> list[Snippet]:
    lines = doc.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            kind = reason = None
            m = MARK.match(lines[k].strip()) if k >= 0 else None
            if m:
                kind, reason = m["kind"], m["reason"]
            code = "\n".join(body) + "\n"
            if kind == "continues" and out:  # one run for the chain: the earlier block runs as part of this one
                before = out.pop()
                out.append(Snippet(doc, before.line, before.code, "skip", f"runs as part of {doc.name}:{start + 1}"))
                code, kind, reason = before.code + code, None, ""
            out.append(Snippet(doc, start + 1, code, kind, reason or ""))
        i += 1
    return out


ALL = [s for doc in DOCS for s in snippets(doc)]


def needed_names(code: str) -> set[str]:
    """Names ``code`` reads without binding them anywhere (nor being builtins)."""
    tree = ast.parse(code)
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loaded - bound - set(dir(builtins))


def prelude_for(code: str) -> str:
    order: list[str] = []

    def add(name: str) -> None:
        if name in order or name not in PRELUDE_BY_NAME:
            return
        for dep in PRELUDE_BY_NAME[name][1]:
            add(dep)
        order.append(name)

    for name in sorted(needed_names(code)):
        add(name)
    return "\n".join(PRELUDE_BY_NAME[n][0] for n in order) + "\n"


_CHILD = textwrap.dedent("""
    import ast, asyncio, json, os, sys, traceback
    item = json.load(open(sys.argv[1]))
    ns = {"__name__": "__main__"}
    try:
        exec(compile(item["prelude"], "<prelude>", "exec"), ns)
        code = compile(item["code"], item["id"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if code.co_flags & 0x80:  # CO_COROUTINE: the snippet awaits at top level
            asyncio.run(eval(code, ns))
        else:
            exec(code, ns)
        result = {"ok": True}
    except BaseException as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    for obj in list(ns.values()):  # batchers hold threads: close what the snippet left open
        if type(obj).__module__.startswith("motorpool") and callable(getattr(obj, "close", None)):
            try:
                obj.close()
            except Exception:
                pass
    with open(item["out"], "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # threads a snippet left behind must not keep the child alive
""")


def backends_named(code: str) -> set[str]:
    """Registered backend names that ``code`` spells as string literals."""
    from motorpool import get_registry

    names = set(get_registry().names())
    literals = {n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return names & literals


def run_snippet(snippet: Snippet, work: Path) -> dict:
    """Run ``snippet`` (after the prelude it needs) in a fresh child process in ``work``."""
    job, out = work / "job.json", work / "result.json"
    job.write_text(json.dumps({"id": snippet.id, "code": snippet.code, "prelude": prelude_for(snippet.code),
                               "out": str(out)}))
    allowed = sorted(set(BASE_BACKENDS) | backends_named(snippet.code))
    blocked = sorted(set(BUILTIN_BACKENDS) - set(allowed))  # built-ins stay unless blocked by name
    env = {**os.environ, "MOTORPOOL_CACHE": str(work / "cache"), "MOTORPOOL_PLUGINS": ",".join(allowed),
           "MOTORPOOL_BLOCK_PLUGINS": ",".join(blocked), "OMP_NUM_THREADS": "1",  # two snippets run at once
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(job)], capture_output=True, text=True, env=env,
                              cwd=work, timeout=SNIPPET_TIMEOUT_S)
        tail = (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the snippet ran past {SNIPPET_TIMEOUT_S} s"}
    if not out.exists():
        return {"ok": False, "error": f"the child died before the snippet finished (exit {proc.returncode}):\n{tail}"}
    return json.loads(out.read_text())


def test_every_snippet_marker_is_known():
    bad = [f"{s.id}: snippet: {s.kind} {s.reason!r}" for s in ALL
           if s.kind is not None and (s.kind not in ("skip", "xfail") or not s.reason)]
    bad += [f"{s.id}: xfail must name the issue ('xfail issue-N: reason')" for s in ALL
            if s.kind == "xfail" and not re.match(r"issue-\d+:", s.reason)]
    assert not bad, "unknown or reasonless snippet markers:\n  " + "\n  ".join(bad)


def test_the_docs_have_snippets_and_every_one_parses():
    assert len(ALL) >= 20
    for s in ALL:
        ast.parse(s.code, filename=s.id)


@pytest.fixture(scope="module")
def snippet_results(tmp_path_factory) -> dict[str, dict]:
    """Every runnable snippet's result, run PARALLEL at a time in fresh child processes."""
    runnable = [s for s in ALL if s.kind != "skip"]
    root = tmp_path_factory.mktemp("snippets")

    def run(i_snippet):
        i, snippet = i_snippet
        work = root / f"s{i}"
        work.mkdir()
        return snippet.id, run_snippet(snippet, work)

    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        return dict(pool.map(run, enumerate(runnable)))


@pytest.mark.parametrize("snippet", ALL, ids=[s.id for s in ALL])
def test_snippet_runs(snippet: Snippet, request):
    if snippet.kind == "skip":
        pytest.skip(snippet.reason)
    if snippet.kind == "xfail":
        request.applymarker(pytest.mark.xfail(reason=snippet.reason, strict=True))
    result = request.getfixturevalue("snippet_results")[snippet.id]
    assert result["ok"], (f"{snippet.id} fails as written: {result['error']}\n--- snippet ---\n{snippet.code}"
                          f"--- prelude ---\n{prelude_for(snippet.code)}\n{result.get('traceback', '')}")


PATH = re.compile(r"`((?:core|backends|plugins|tests|examples|benchmarks|docs|scripts|\.ci|\.github)/[\w./-]*)`")


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_path_the_docs_name_exists():
    """Paths in backticks (from the repository root) and relative link targets (from the document)."""
    missing = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for path in PATH.findall(line):
                if not (ROOT / path.rstrip("/")).exists():
                    missing.append(f"{doc.relative_to(ROOT)}:{n}: {path}")
            for target in LINK.findall(line):
                if "://" not in target and not target.startswith("mailto:") and \
                        not (doc.parent / target).exists():
                    missing.append(f"{doc.relative_to(ROOT)}:{n}: link {target}")
    assert not missing, "paths named in the docs that do not exist:\n  " + "\n  ".join(missing)


# -- docs/plugins.md: the public types' tables and the priority scale match the code -----------------------

def _table_after(text: str, heading: str) -> dict[str, str]:
    """{first cell: second cell} of the first table after ``heading``, backticks stripped."""
    start = text.index(heading)
    rows, seen_table = {}, False
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) >= 2 and cells[0].startswith("`"):
                rows[cells[0].strip("`")] = cells[1].strip("`") if cells[1] != "required" else "required"
        elif seen_table:
            break
    return rows


def _default(cls, name: str):
    import dataclasses

    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                return "required"
    return getattr(cls, name, "required")


@pytest.mark.parametrize("type_name", ["Capabilities", "Availability", "CompileOptions", "BackendRecord", "Runner",
                                       "Backend"])
def test_plugins_md_lists_every_field_with_its_default(type_name):
    import dataclasses

    import motorpool

    cls = getattr(motorpool, type_name)
    rows = _table_after((ROOT / "docs" / "plugins.md").read_text(), f"### `motorpool.{type_name}`")
    if dataclasses.is_dataclass(cls):
        fields = [f.name for f in dataclasses.fields(cls)]
    else:  # the annotated class attributes of the abstract base
        fields = list(cls.__annotations__)
    assert list(rows) == fields, f"docs/plugins.md's {type_name} table lists {list(rows)}; the class has {fields}"
    problems = []
    for name, text in rows.items():
        want = _default(cls, name)
        got = "required" if text == "required" else eval(text, {})  # noqa: S307 - our own doc's literals
        if got != want:
            problems.append(f"{name}: the doc says {text}, the code's default is {want!r}")
    assert not problems, f"docs/plugins.md's {type_name} table:\n  " + "\n  ".join(problems)


def test_plugins_md_priority_table_matches_the_backends():
    from motorpool import get_registry

    rows = _table_after((ROOT / "docs" / "plugins.md").read_text(), "## `priority`")
    registry = get_registry()
    problems = [f"{name}: the doc says {text}, it declares {registry.get(name).capabilities.priority}"
                for name, text in rows.items()
                if name in registry.names() and dict(registry.get(name).capabilities.priority) != eval(text, {})]  # noqa: S307
    builtins_missing = [n for n in registry.names() if registry.provider(n).startswith("motorpool ") and n not in rows]
    assert not problems and not builtins_missing, (problems, builtins_missing)
