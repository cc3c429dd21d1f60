"""motorpool's pytest plugin: parametrization that never hides a backend, markers that skip with the
backend's own reason, collection errors for unknown names, filters, gap markers and the report header.

The scenarios run in pytest subprocesses with toy backends registered by their conftest (and one broken
installed plugin), so nothing here touches this process's registry. Few subprocesses: each pays for
importing torch.
"""

import fnmatch
import os
import re
import subprocess
import sys
import textwrap

import pytest

import motorpool
from motorpool.testing import zoo

CONFTEST = '''
import motorpool
from motorpool import Availability, Backend, Capabilities


class _Base(Backend):
    def compile(self, model, example_inputs, options):
        raise NotImplementedError

    def load(self, directory, metadata, options):
        raise NotImplementedError


class Here(_Base):
    name = "toyhere"
    capabilities = Capabilities(devices=("cpu", "cuda"), precisions=frozenset({"fp32", "int8"}))

    def availability(self):
        return Availability.ok(version="1.2.3", devices=["cpu"])


class Ghost(_Base):
    name = "toyghost"
    extra = "ghost"
    capabilities = Capabilities(devices=("cpu",))

    def availability(self):
        return Availability.not_installed("ghostruntime", "ghost")


class Plain(Here):
    name = "toyplain"
    capabilities = Capabilities(devices=("cpu",), precisions=frozenset({"fp32"}))


for cls in (Here, Ghost, Plain):
    motorpool.get_registry().register(cls, provider="test toy")
'''

FILES = {
    "test_fixture.py": '''
        def test_uses(backend, backend_device):
            assert backend_device == "cpu"


        class TestNamed:
            backends = ("toyhere", "notinstalled")

            def test_named(self, backend):
                pass
    ''',
    "test_markers.py": '''
        import pytest

        @pytest.mark.backend("toyghost")
        def test_needs_ghost():
            pass

        @pytest.mark.backend("toyhere")
        def test_needs_here():
            pass

        @pytest.mark.device("cuda")
        def test_needs_cuda():
            pass

        @pytest.mark.capability("int8")
        def test_int8(backend):
            assert "int8" in backend.capabilities.precisions
    ''',
    "test_gaps.py": '''
        import pytest

        @pytest.mark.notyet(["toyhere"], reason="the toy runtime has no GRU")
        @pytest.mark.backend("toyhere")
        def test_gap(backend):
            raise RuntimeError("no GRU")

        @pytest.mark.notimpl(["toyhere"], reason="said missing, but works")
        @pytest.mark.backend("toyhere")
        def test_closed_gap(backend):
            pass

        @pytest.mark.notimpl(["toyhere"], models=["gru"], reason="only gru")
        @pytest.mark.backend("toyhere")
        @pytest.mark.parametrize("zoo_model", ["gru", "mlp"])
        def test_per_model(backend, zoo_model):
            assert zoo_model != "gru"

        @pytest.mark.notimpl(["toyhere"], checks=["test_only_this"], reason="only this check")
        @pytest.mark.backend("toyhere")
        class TestChecks:
            def test_only_this(self, backend):
                raise RuntimeError("gap")

            def test_other(self, backend):
                pass
    ''',
}
BAD_MARKERS = {
    'backend("nosuch")': "unknown backend(s) ['nosuch']",
    'notimpl(["nosuch"], reason="x")': "unknown backend(s) ['nosuch']",
    'notyet(["toyhere"])': "must carry a reason",
    'device("tpu")': "unknown device(s) ['tpu']",
    'capability("int4")': "unknown capabilities ['int4']",
}


def _pytest(root, *args, env=None):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=root,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """One pytest run over every scenario file, with a broken installed plugin on the path."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "conftest.py").write_text(CONFTEST)
    for name, src in FILES.items():
        (root / name).write_text(textwrap.dedent(src))
    for i, marker in enumerate(BAD_MARKERS):
        (root / f"test_bad_{i}.py").write_text(f"import pytest\n\n\n@pytest.mark.{marker}\ndef test_x():\n    pass\n")
    site = root / "site"
    info = site / "toy_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[motorpool.backends]\ntoybroken = toy_broken_missing_module\n")
    # Only eager and the broken plugin load from entry points: importing every runtime for the report
    # header would cost each subprocess seconds.
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "MOTORPOOL_PLUGINS": "eager,toybroken"}
    code, out = _pytest(root, "-rA", "--continue-on-collection-errors", env=env)
    return root, code, out


def short(pattern: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", pattern).strip("_")[:60]


def has(out: str, pattern: str) -> bool:
    return any(fnmatch.fnmatch(line, pattern) for line in out.splitlines())


@pytest.mark.parametrize("pattern", ids=short, argvalues=[
    "PASSED test_fixture.py::test_uses[[]toyhere-cpu[]]",
    "PASSED test_fixture.py::test_uses[[]eager-cpu[]]",
    "SKIPPED *toyhere sees no cuda device here (it sees cpu)",
    '*toyghost is not available: ghostruntime is not installed (fix: pip install "motorpool[[]ghost[]]")',
    "SKIPPED *plugin 'toybroken' from toy-broken was skipped by motorpool: import failed: ModuleNotFoundError*",
    "PASSED test_fixture.py::TestNamed::test_named[[]toyhere-cpu[]]",
    "SKIPPED *no loaded plugin registers backend 'notinstalled': install its distribution*",
])
def test_backend_fixture_covers_every_backend_and_device_and_skips_with_reasons(scenario, pattern):
    assert has(scenario[2], pattern), scenario[2][-4000:]


@pytest.mark.parametrize("pattern", ids=short, argvalues=[
    "SKIPPED *toyghost is not available: ghostruntime is not installed*",
    "PASSED test_markers.py::test_needs_here",
    "SKIPPED *needs a cuda device*",
    "PASSED test_markers.py::test_int8[[]toyhere-cpu[]]",
])
def test_markers_skip_with_the_backend_reason_and_select_capabilities(scenario, pattern):
    assert has(scenario[2], pattern), scenario[2][-4000:]


def test_capability_marker_skips_backends_that_do_not_declare_it(scenario):
    assert has(scenario[2], "SKIPPED *toyplain does not declare int8"), scenario[2][-4000:]


@pytest.mark.parametrize("pattern", ids=short, argvalues=[
    "XFAIL test_gaps.py::test_gap[[]toyhere-cpu[]] - notyet (not yet supported by the runtime): the toy runtime "
    "has no GRU",
    "FAILED test_gaps.py::test_closed_gap[[]toyhere-cpu[]]*XPASS(strict)*",
    "XFAIL test_gaps.py::test_per_model[[]toyhere-cpu-gru[]]*only gru",
    "PASSED test_gaps.py::test_per_model[[]toyhere-cpu-mlp[]]",
    "XFAIL test_gaps.py::TestChecks::test_only_this[[]toyhere-cpu[]]*only this check",
    "PASSED test_gaps.py::TestChecks::test_other[[]toyhere-cpu[]]",
])
def test_gap_markers_are_strict_xfails_carrying_their_reason(scenario, pattern):
    assert has(scenario[2], pattern), scenario[2][-4000:]


@pytest.mark.parametrize("index, message", list(enumerate(BAD_MARKERS.values())))
def test_unknown_names_in_markers_are_collection_errors(scenario, index, message):
    assert has(scenario[2], f"ERROR test_bad_{index}.py*"), scenario[2][-4000:]
    assert message in scenario[2]


@pytest.mark.parametrize("pattern", ids=short, argvalues=[
    "motorpool *: * devices cpu*",
    "  eager * devices cpu*",
    "  toyhere*1.2.3*devices cpu",
    '  toyghost*not-installed*ghostruntime is not installed (fix: pip install "motorpool[[]ghost[]]")',
    "  toybroken*plugin-skipped*from toy-broken: import failed*",
])
def test_report_header_lists_backends_versions_and_devices(scenario, pattern):
    assert has(scenario[2], pattern), scenario[2][:4000]


def test_environment_filter_and_unknown_filter_names(scenario):
    root = scenario[0]
    code, out = _pytest(root, "--collect-only", "-q", "test_fixture.py", env={"MOTORPOOL_TEST_BACKENDS": "toyhere",
                                                                         "MOTORPOOL_PLUGINS": "eager"})
    assert code == 0, out
    ids = sorted(line for line in out.splitlines() if line.startswith("test_fixture.py::"))
    assert ids == ["test_fixture.py::TestNamed::test_named[toyhere-cpu]",
                   "test_fixture.py::TestNamed::test_named[toyhere-cuda]",
                   "test_fixture.py::test_uses[toyhere-cpu]", "test_fixture.py::test_uses[toyhere-cuda]"]
    code, out = _pytest(root, "test_fixture.py", "--motorpool-backends=nosuch", env={"MOTORPOOL_PLUGINS": "eager"})
    assert code != 0
    assert "unknown backends ['nosuch']" in out


def test_the_suite_gets_a_cache_of_its_own():
    """Under the testing kit, compiles never read or write the user's cache: MOTORPOOL_CACHE points at a fresh
    directory for the session."""
    import os
    import tempfile

    root = os.environ["MOTORPOOL_CACHE"]
    assert os.path.basename(root).startswith("motorpool-test-cache-")
    assert os.path.dirname(root) == tempfile.gettempdir()


def test_the_cache_key_names_the_distribution_and_code_of_the_backend():
    from motorpool.engine.artifact_cache import make_key

    eager = motorpool.get_registry().get("eager")
    model, ex = zoo.get("mlp").build(2)
    spec = motorpool.InputSpec.from_examples(ex)
    key = make_key(eager, eager.availability(), model, spec, precision="fp32", options={})
    assert key["backend_provider"].startswith(f"motorpool=={motorpool.__version__} source:")
