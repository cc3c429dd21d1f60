"""The conformance suite catches wrong backends: each toy below breaks one promise, and the suite says so.

The toys run a real model (eager PyTorch inside), so the only thing wrong with each is its defect; an
honest twin of the liar passes the very same checks, so the failures come from the defects alone:
``liar`` claims thread safety it lacks, ``wrongshape`` returns the first row of the batch only, ``hoarder``
declares a serializable artifact it will not write, ``mute`` is unavailable without saying why, ``nan``
puts one NaN in its output, ``rewriter`` runs a copy right but re-lays the caller's weights out (as a
backend reordering weights into its own blocked layout in place would).
The suite runs in a pytest subprocess, so the toys never enter this process's registry.
"""

import textwrap

import pytest

TOYS = textwrap.dedent('''
    import copy
    import threading
    import time

    import torch

    import motorpool
    from motorpool import Availability, Backend, Capabilities, Runner, UnsupportedError


    class ToyRunner(Runner):
        native_inputs = "torch"

        def __init__(self, model, device, precision):
            self.model, self.device, self.precision, self.info = model, device, precision, {}

        def save(self, directory):
            raise UnsupportedError("toy runners cannot be saved", backend="toy")


    class SharedStateRunner(ToyRunner):
        """Claims thread safety, but parks each call's inputs on the runner while it works."""

        thread_safe = True

        def run(self, inputs):
            self._inputs = inputs
            time.sleep(0.002)  # long enough for another thread to overwrite self._inputs
            with torch.inference_mode():
                return torch.utils._pytree.tree_flatten(self.model(*self._inputs))[0]


    class LocalStateRunner(ToyRunner):
        """The honest twin: the same work, with the inputs kept local to the call."""

        thread_safe = True

        def run(self, inputs):
            time.sleep(0.002)
            with torch.inference_mode():
                return torch.utils._pytree.tree_flatten(self.model(*inputs))[0]


    class WrongShapeRunner(ToyRunner):
        """Returns only the first row of the batch for every output."""

        def run(self, inputs):
            with torch.inference_mode():
                return [x[:1] for x in torch.utils._pytree.tree_flatten(self.model(*inputs))[0]]


    class NaNRunner(LocalStateRunner):
        """Right everywhere but one element, which is NaN."""

        def run(self, inputs):
            out = [x.clone() for x in super().run(inputs)]
            out[0].view(-1)[0] = float("nan")
            return out


    def relayout(model):
        """The caller's 2-D weights, same values, in column-major layout: what an in-place reorder leaves."""
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.data = p.data.t().contiguous().t()


    def toy(name, runner_cls, thread_safe, serializable=False, availability=None, touch=None):
        class Toy(Backend):
            capabilities = Capabilities(devices=("cpu",), thread_safe=thread_safe, serializable=serializable)

            def availability(self):
                return availability or Availability.ok(version="0.0", devices=["cpu"])

            def compile(self, model, example_inputs, options):
                if touch is not None:
                    runner = runner_cls(copy.deepcopy(model), options.device, options.precision)
                    touch(model)
                    return runner
                return runner_cls(model, options.device, options.precision)

            def load(self, directory, metadata, options):
                raise UnsupportedError("toy backends cannot load", backend=name)

        Toy.name = name
        Toy.__name__ = f"Toy_{name}"
        return Toy


    LIAR = toy("liar", SharedStateRunner, thread_safe=True)
    HONEST = toy("honest", LocalStateRunner, thread_safe=True)
    WRONG_SHAPE = toy("wrongshape", WrongShapeRunner, thread_safe=True)
    NAN = toy("nan", NaNRunner, thread_safe=True)
    # declares serializable, but its runner refuses to save
    HOARDER = toy("hoarder", LocalStateRunner, thread_safe=True, serializable=True)
    # not available, and will not say why
    MUTE = toy("mute", LocalStateRunner, thread_safe=True,
               availability=Availability(motorpool.Status.NO_DEVICE, reason=""))
    # right answers from a copy, but the caller's weights are left re-laid out
    REWRITER = toy("rewriter", LocalStateRunner, thread_safe=True, touch=relayout)
''')

CONFTEST = textwrap.dedent('''
    import motorpool
    import toys

    for cls in (toys.LIAR, toys.HONEST, toys.WRONG_SHAPE, toys.HOARDER, toys.MUTE, toys.NAN, toys.REWRITER):
        motorpool.get_registry().register(cls, provider="test toy")
''')

SUITE = textwrap.dedent('''
    from motorpool.testing.conformance import BackendConformance


    class TestToys(BackendConformance):
        backends = ("liar", "honest", "wrongshape", "hoarder", "mute", "nan", "rewriter")
        zoo_models = ("mlp", "dict_out")
        thread_models = ("mlp",)
''')


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One subprocess run of the suite over the three toys; outcomes by test id."""
    import os
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    root = tmp_path_factory.mktemp("toys")
    (root / "toys.py").write_text(TOYS)
    (root / "conftest.py").write_text(CONFTEST)
    (root / "test_toys.py").write_text(SUITE)
    junit = root / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
                           f"--junitxml={junit}", "-o", "junit_family=xunit2", "test_toys.py"],
                          cwd=root, capture_output=True, text=True, timeout=600,
                          # the toys are registered by hand; loading every runtime's plugin would only cost time
                          env={**os.environ, "MOTORPOOL_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert junit.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kind = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                outcomes[case.get("name")] = (kind, child.get("message") or "")
                break
        else:
            outcomes[case.get("name")] = (kind, "")
    return outcomes, proc.stdout


def outcome(results, test):
    outcomes, stdout = results
    assert test in outcomes, f"{test} did not run; ran: {sorted(outcomes)}\n{stdout[-3000:]}"
    return outcomes[test]


def test_false_thread_safety_claim_is_caught_on_the_runner(results):
    kind, message = outcome(results, "test_declared_thread_safety_of_runner[mlp-liar-cpu]")
    assert kind == "failed", message
    assert "declares thread_safe" in message and "does not match its own input" in message


def test_false_thread_safety_claim_is_caught_through_the_engine(results):
    # The runner claims thread safety, so the Engine adds no lock: the race shows through the engine too.
    kind, message = outcome(results, "test_concurrent_calls_through_engine[mlp-liar-cpu]")
    assert kind == "failed", message


def test_honest_twin_passes_the_same_thread_checks(results):
    for test in ("test_declared_thread_safety_of_runner[mlp-honest-cpu]",
                 "test_concurrent_calls_through_engine[mlp-honest-cpu]",
                 "test_compile_and_run[mlp-honest-cpu]", "test_numerics_on_fresh_inputs[dict_out-honest-cpu]",
                 "test_compile_leaves_the_model_unchanged[mlp-honest-cpu]",
                 "test_bad_inputs_raise_input_error[dict_out-honest-cpu]",
                 "test_save_load_in_fresh_process[honest-cpu]"):
        kind, message = outcome(results, test)
        assert kind == "passed", f"{test}: {kind}: {message}"


@pytest.mark.parametrize("test", ["test_compile_and_run[mlp-wrongshape-cpu]",
                                  "test_compile_and_run[dict_out-wrongshape-cpu]",
                                  "test_numerics_on_fresh_inputs[mlp-wrongshape-cpu]",
                                  "test_dynamic_batch[dict_out-wrongshape-cpu]",
                                  "test_numpy_in_numpy_out[mlp-wrongshape-cpu]"])
def test_wrong_shapes_are_caught(results, test):
    kind, message = outcome(results, test)
    assert kind == "failed", message
    assert "shape" in message, message


def test_wrong_shapes_fail_verification_as_a_user_compile_would(results):
    # The suite compiles with verification on, as users do: an engine that returns the wrong shape never
    # gets as far as the other checks, and every failure names the output that is wrong.
    kind, message = outcome(results, "test_bad_inputs_raise_input_error[mlp-wrongshape-cpu]")
    assert kind == "failed" and "does not match eager PyTorch" in message and "shape [1, 10]" in message, message


def test_a_false_serializable_claim_is_caught(results):
    kind, message = outcome(results, "test_save_load_in_fresh_process[hoarder-cpu]")
    assert kind == "failed", message
    assert "save failed though hoarder declares serializable" in message


def test_an_unavailable_backend_that_gives_no_reason_is_caught(results):
    kind, message = outcome(results, "test_availability_is_well_formed[mute]")
    assert kind == "failed", message
    assert "gives no reason" in message
    # ... and its other checks skip, saying it is unavailable (with the empty reason's status)
    kind, message = outcome(results, "test_compile_and_run[mlp-mute-cpu]")
    assert kind == "skipped" and "mute is not available: no-device" in message, message


@pytest.mark.parametrize("test", ["test_compile_and_run[mlp-nan-cpu]", "test_numerics_on_fresh_inputs[dict_out-nan-cpu]",
                                  "test_numpy_in_numpy_out[mlp-nan-cpu]"])
def test_nan_never_passes(results, test):
    kind, message = outcome(results, test)
    assert kind == "failed" and "NaN/Inf where the reference is finite" in message, message


def test_a_backend_that_rewrites_the_callers_weights_is_caught(results):
    kind, message = outcome(results, "test_compile_leaves_the_model_unchanged[mlp-rewriter-cpu]")
    assert kind == "failed", message
    assert "rewriter changed" in message and "stride" in message, message
    # its answers are right: only the model check points at it
    kind, message = outcome(results, "test_compile_and_run[mlp-rewriter-cpu]")
    assert kind == "passed", message
