"""The plugin mechanism: entry points loaded on first use, broken plugins isolated, duplicates named,
operator switches honoured."""

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import motorpool
from motorpool.testing import zoo
from motorpool.backends.eager import EagerBackend
from motorpool.plugin.registry import Registry


def make_dist(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """A fake installed distribution: a .dist-info with entry points, and its modules, on a sys.path dir."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[motorpool.backends]\n{eps}\n")
    for name, src in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))
    return root


GOOD = """
import motorpool
from motorpool import Availability, Backend, BackendRecord, Capabilities

class ToyBackend(Backend):
    name = "{name}"
    capabilities = Capabilities()
    def availability(self):
        return Availability.no_device("toy backend has no device", fix="there is none")
    def compile(self, model, example_inputs, options):
        raise motorpool.UnsupportedError("toy")
    def load(self, directory, metadata, options):
        raise motorpool.UnsupportedError("toy")

@motorpool.hookimpl
def motorpool_register_backends():
    return [BackendRecord(ToyBackend)]
"""


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("toy_")]:
        del sys.modules[mod]


def test_import_loads_no_plugins():
    code = ("import sys, motorpool; "
            "bad = [m for m in sys.modules if m.startswith('motorpool.backends.') or m in "
            "('onnxruntime', 'openvino', 'coremltools', 'torch_tensorrt')]; print(bad); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builtins_are_found_through_entry_points(monkeypatch):
    monkeypatch.delenv("MOTORPOOL_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    reg = Registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", motorpool.PluginWarning)
        names = reg.names()
    assert {"eager", "torchscript", "torch_compile"} <= set(names)
    assert "motorpool" in reg.provider("eager")


def test_broken_plugin_is_skipped_with_its_distribution(plugin_path, monkeypatch):
    make_dist(plugin_path, "toy-broken", {"toybroken": "toy_broken"},
              {"toy_broken": "raise ImportError('libtoy.so: cannot open shared object file')\n"})
    make_dist(plugin_path, "toy-good", {"toygood": "toy_good"}, {"toy_good": GOOD.format(name="toy")})
    monkeypatch.setenv("MOTORPOOL_PLUGINS", "toybroken,toygood")
    reg = Registry()
    with pytest.warns(motorpool.PluginWarning, match=r"toybroken.*toy-broken.*libtoy\.so"):
        names = reg.names()
    assert "toy" in names and "eager" in names  # the built-ins stay: MOTORPOOL_PLUGINS picks third parties
    assert reg.skipped[0][:2] == ("toybroken", "toy-broken")


def test_list_backends_survives_a_broken_plugin(plugin_path, monkeypatch):
    make_dist(plugin_path, "toy-broken2", {"toybroken2": "toy_broken2"}, {"toy_broken2": "1/0\n"})
    monkeypatch.setenv("MOTORPOOL_PLUGINS", "toybroken2")
    monkeypatch.setenv("MOTORPOOL_BLOCK_PLUGINS", "torchscript,torch_compile,onnxruntime,openvino,tensorrt,coreml")
    from motorpool.plugin.registry import set_registry

    previous = set_registry(Registry())
    try:
        with pytest.warns(motorpool.PluginWarning, match="ZeroDivisionError"):
            rows = motorpool.list_backends()
        assert [r.name for r in rows] == ["eager"] and rows[0].available
    finally:
        set_registry(previous)


def test_duplicate_names_are_rejected_naming_both(plugin_path, monkeypatch):
    make_dist(plugin_path, "toy-one", {"toyone": "toy_one"}, {"toy_one": GOOD.format(name="toy")})
    make_dist(plugin_path, "toy-two", {"toytwo": "toy_two"}, {"toy_two": GOOD.format(name="toy")})
    monkeypatch.setenv("MOTORPOOL_PLUGINS", "toyone,toytwo")
    reg = Registry()
    with pytest.warns(motorpool.PluginWarning, match=r"'toy' is registered twice: by toy-one .* and by toy-two"):
        names = reg.names()
    assert names.count("toy") == 1 and "toy-one" in reg.provider("toy")


def test_bad_record_is_reported(plugin_path, monkeypatch):
    make_dist(plugin_path, "toy-bad", {"toybad": "toy_bad"}, {"toy_bad": """
        import motorpool
        @motorpool.hookimpl
        def motorpool_register_backends():
            return ["not a record"]
    """})
    monkeypatch.setenv("MOTORPOOL_PLUGINS", "toybad")
    with pytest.warns(motorpool.PluginWarning, match="expected motorpool.BackendRecord"):
        names = Registry().names()
    assert "eager" in names and len(names) == len(set(names))


BUILTINS = {"eager", "torchscript", "torch_compile", "onnxruntime", "openvino", "tensorrt", "coreml"}


def test_autoload_switch_keeps_the_builtins_and_block_list(plugin_path, monkeypatch):
    make_dist(plugin_path, "toy-three", {"toythree": "toy_three"}, {"toy_three": GOOD.format(name="toy3")})
    monkeypatch.delenv("MOTORPOOL_PLUGINS", raising=False)
    assert "toy3" in Registry().names()
    monkeypatch.setenv("MOTORPOOL_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert set(Registry().names()) == BUILTINS  # no third party, every built-in
    assert Registry(autoload=False).names() == []
    monkeypatch.delenv("MOTORPOOL_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.delenv("MOTORPOOL_PLUGINS", raising=False)
    monkeypatch.setenv("MOTORPOOL_BLOCK_PLUGINS", "torch_compile,torchscript,onnxruntime,openvino,tensorrt,coreml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", motorpool.PluginWarning)
        names = Registry().names()
    assert "eager" in names and "torchscript" not in names and "torch_compile" not in names


def test_register_by_hand_and_unknown_name(fresh_registry):
    fresh_registry.register(EagerBackend)
    with pytest.raises(motorpool.DuplicateBackendError, match="registered twice"):
        fresh_registry.register(EagerBackend, provider="my notebook")
    with pytest.raises(motorpool.UnknownBackendError, match="Choose one of: eager"):
        fresh_registry.get("eagr")


def test_availability_exception_becomes_an_answer(fresh_registry):
    class Flaky(EagerBackend):
        name = "flaky"

        def availability(self):
            raise OSError("driver exploded")

    fresh_registry.register(Flaky)
    (row,) = motorpool.list_backends()
    assert not row.available and row.status == "import-failed" and "driver exploded" in row.reason


def test_every_availability_is_well_formed():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", motorpool.PluginWarning)
        rows = motorpool.list_backends()
    for row in rows:
        assert row.status in {s.value for s in motorpool.Status}
        if not row.available:
            assert row.reason, row
        if row.status == "not-installed":
            assert row.fix and row.fix.startswith('pip install "motorpool['), row


@pytest.mark.parametrize("var", ["MOTORPOOL_PLUGINS", "MOTORPOOL_BLOCK_PLUGINS"])
def test_a_misspelled_plugin_name_is_warned_with_the_installed_ones(var, monkeypatch):
    monkeypatch.setenv(var, "onnxrutime")
    with pytest.warns(motorpool.PluginWarning, match=rf"{var} names onnxrutime, which no installed plugin "
                                                    r"provides; installed: .*onnxruntime"):
        names = Registry().names()
    assert BUILTINS <= set(names)  # the typo changed nothing


def test_an_empty_registry_says_why_compile_has_no_candidate(monkeypatch):
    from motorpool.plugin.registry import set_registry

    monkeypatch.setenv("MOTORPOOL_BLOCK_PLUGINS", ",".join(sorted(BUILTINS)))
    monkeypatch.setenv("MOTORPOOL_PLUGINS", "nothing_here")
    previous = set_registry(Registry())
    try:
        model, x = zoo.get("mlp").build(2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", motorpool.PluginWarning)
            with pytest.raises(motorpool.CompileError, match=r"no backend is registered: MOTORPOOL_BLOCK_PLUGINS="
                                                             r"coreml,eager.*MOTORPOOL_PLUGINS=nothing_here"):
                motorpool.compile(model, x)
    finally:
        set_registry(previous)


# -- declared options -------------------------------------------------------------------------------------

def test_a_misspelled_option_is_an_error_with_the_closest_name():
    model, x = zoo.get("mlp").build(2)
    with pytest.raises(motorpool.OptionError, match=r"'int_8' is not an option of backend 'eager'; did you mean "
                                                    r"'int8'\? \(valid: int8\)"):
        motorpool.compile(model, x, backend="eager", precision="int8", options={"int_8": "static"}, cache=False)
    with pytest.raises(motorpool.OptionError, match="option 'int8': 'statik' is not one of 'auto', 'dynamic'"):
        motorpool.compile(model, x, backend="eager", precision="int8", options={"int8": "statik"}, cache=False)


def test_under_auto_a_key_must_belong_to_some_candidate_and_reaches_only_its_backend():
    model, x = zoo.get("mlp").build(2)
    with pytest.raises(motorpool.OptionError, match=r"'intra_op_threads' is not an option of any of the candidate "
                                                    r"backends .*did you mean 'intra_op_num_threads'"):
        motorpool.compile(model, x, backend="auto", options={"intra_op_threads": 1}, cache=False)
    # an option only onnxruntime declares is fine under a list, and eager never sees it
    engine = motorpool.compile(model, x, backend=["eager", "onnxruntime"], cache=False,
                               options={"intra_op_num_threads": 1})
    assert engine.backend == "eager" and engine.options == {}


def test_every_builtin_backend_declares_its_options():
    for name in ("eager", "torchscript", "torch_compile", "onnxruntime", "openvino", "tensorrt", "coreml"):
        declared = motorpool.get_registry().get(name).declared_options()
        assert declared, name
        for option in declared.values():
            assert option.doc and option.name.isidentifier(), (name, option)
