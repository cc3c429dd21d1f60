"""The backend conformance suite: what every motorpool backend must do, as one pytest class.

A plugin author runs it against their backend with a few lines (motorpool's pytest plugin, loaded through
the ``pytest11`` entry point, supplies the ``backend`` fixture and the engine cache)::

    # tests/test_conformance.py of your plugin
    from motorpool.testing.conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        backends = ("mybackend",)        # leave out to run over every registered backend

Each backend is checked on every device it declares (an unavailable backend or device is SKIPPED with the
backend's own reason) for:

- compile and run of the zoo (several inputs, dict/tuple outputs, conv+BatchNorm, GRU/LSTM, attention,
  integer token inputs): same output structure, shapes and dtypes as the model;
- numerics against eager PyTorch on fresh random inputs (never zeros, NaN never passes) at fp32 and at
  every other precision the backend declares, with the tolerances of :mod:`motorpool.pipeline.verify`;
- dynamic batch: several batch sizes after one compile when declared, a clear ``InputError`` when not;
- NumPy arrays in give NumPy arrays out;
- every kind of bad input raises :class:`motorpool.InputError` (count, rank, shape, dtype, device, non-tensor);
- many threads calling one engine with distinct inputs, each result matching its own input; and, when the
  backend declares ``thread_safe``, the same on its runner directly, with no lock in between;
- save, then load and run in a fresh process (one child per backend for all models);
- odd memory layouts (channels_last, transposed, sliced, Fortran order, negative strides, big-endian) give
  the same answers (:mod:`.conformance_inputs`);
- the caller's model unchanged by compiling (weights, buffers, their layout, the mode);
- a well-formed ``availability()`` answer and well-formed capabilities.

Known gaps are declared with markers carrying a reason (see :mod:`motorpool.testing.plugin`)::

    @pytest.mark.notyet(["mybackend"], models=["gru"], reason="the runtime has no GRU op")
    class TestMyBackend(BackendConformance): ...

A backend whose compile cost is declared ``"high"`` runs a reduced zoo (``reduced_zoo``) so the suite stays
within minutes; the skipped models say so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree

import motorpool

from ..pipeline.verify import compare, tolerance_for
from . import zoo
from .checks import (CHILD_SCRIPT, Compiled, bad_calls, compare_outputs, fresh_inputs, native, on_engine, reference,
                     resize, run_threads)
from .conformance_inputs import InputLayoutConformance
from .gaps import known_gap
from .targets import DEVICES

REDUCED_PRECISIONS = ("fp16", "bf16", "int8")
#: a pip requirement: a distribution name, optional extras and version bounds (PEP 508, without markers)
_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._, -]+\])?\s*([<>=!~]=?\s*[\w.*]+\s*,?\s*)*")
COMPILE_COSTS = ("none", "low", "medium", "high")


# -- the suite -----------------------------------------------------------------------------------------------

def _models(attribute: str):
    """Parametrize a check's ``zoo_model`` over the class attribute ``attribute`` instead of ``zoo_models``."""
    def mark(fn):
        fn._zoo_attribute = attribute
        return fn
    return mark


class BackendConformance(InputLayoutConformance):
    """Subclass as ``TestSomething`` to run the conformance suite. Class attributes tune it:

    ``backends``: names to run over (None: every registered backend); ``zoo_models``: the zoo models;
    ``reduced_zoo``: the models a backend declaring ``compile_cost == "high"`` runs; ``child_preamble``:
    Python run in the fresh process before loading (e.g. to register a backend by hand).
    """

    backends: tuple[str, ...] | None = None
    zoo_models: tuple[str, ...] = tuple(zoo.ZOO)
    #: backends declaring one of these compile costs run the reduced zoo (seconds to minutes per compile)
    reduced_zoo_costs: tuple[str, ...] = ("high",)
    #: conv+BN, dict output with a nested tuple, several inputs, int tokens, attention: three compiles
    reduced_zoo: tuple[str, ...] = ("cnn", "dict_out", "encoder")
    #: conv+BN then a linear head: where reduced precisions and int8 calibration go wrong first
    precision_models: tuple[str, ...] = ("cnn",)
    reduced_precision_models: tuple[str, ...] = ("mlp",)
    #: saved, then loaded in one fresh process: several inputs, dict output, conv, recurrent, int tokens
    roundtrip_models: tuple[str, ...] = ("two_inputs", "dict_out", "cnn", "lstm", "encoder")
    #: the same for a reduced-zoo backend (loading recompiles in the child)
    reduced_roundtrip: tuple[str, ...] = ("dict_out", "encoder")
    thread_models: tuple[str, ...] = ("mlp", "cnn", "encoder")
    batch_sizes: tuple[int, ...] = (1, 3, 5)
    #: (zoo model, dynamic_dims, axis): the model a backend declaring dynamic_shapes compiles with a named
    #: sequence dimension, then runs at ``sequence_lengths``
    dynamic_shapes_model: tuple = ("attention", {"x": {1: "seq"}}, 1)
    sequence_lengths: tuple[int, ...] = (5, 12, 20)
    threads: int = 8
    calls_per_thread: int = 3
    child_preamble: str = ""
    child_timeout_s: float = 900

    # parametrization of zoo_model and precision, per check
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "zoo_model" in metafunc.fixturenames:
            attribute = getattr(metafunc.function, "_zoo_attribute", "zoo_models")
            wanted = list(getattr(self, attribute))
            if attribute == "precision_models":  # a reduced-zoo backend checks precisions on its own models
                wanted += [m for m in self.reduced_precision_models if m not in wanted]
            models = [m for m in wanted if m in self.zoo_models]
            metafunc.parametrize("zoo_model", models)
        if "reduced_precision" in metafunc.fixturenames:
            metafunc.parametrize("reduced_precision", REDUCED_PRECISIONS)

    def _reduced(self, backend: Any) -> bool:
        return backend.capabilities.compile_cost in self.reduced_zoo_costs

    def _skip_if_reduced(self, backend: Any, model: str, subset: tuple[str, ...] | None = None) -> None:
        subset = self.reduced_zoo if subset is None else subset
        if self._reduced(backend) and model not in subset:
            pytest.skip(f"{backend.name} declares compile_cost={backend.capabilities.compile_cost!r}: this check "
                        f"runs on {list(subset)} only, to keep the suite within its time budget")

    @pytest.fixture
    def compiled(self, backend, backend_device, zoo_model, motorpool_engines) -> Compiled:
        self._skip_if_reduced(backend, zoo_model)
        return motorpool_engines.get(backend, backend_device, zoo_model)

    # -- declarations ---------------------------------------------------------------------------------------

    def test_availability_is_well_formed(self, registered_backend):
        b = registered_backend
        av = b.availability()  # called directly: it must never raise
        assert isinstance(av, motorpool.Availability), \
            f"{b.name}.availability() returned {type(av).__name__}, expected motorpool.Availability"
        assert isinstance(av.status, motorpool.Status), f"{b.name}: status {av.status!r} is not a motorpool.Status"
        json.dumps(av.to_dict())  # doctor --json prints it
        again = b.availability()
        assert again.status is av.status, f"{b.name}: availability changed between two calls ({av} / {again})"
        if av.available:
            assert av.version, f"{b.name} is available but reports no version"
            assert av.devices, f"{b.name} is available but reports no device it can run on"
            kinds = set(b.capabilities.devices)
            for dev in av.devices:
                assert dev.split(":")[0] in kinds, \
                    f"{b.name} sees device {dev!r}, which its capabilities do not declare ({sorted(kinds)})"
            return
        assert av.reason.strip(), f"{b.name} is not available ({av.status.value}) but gives no reason"
        if av.status is motorpool.Status.NOT_INSTALLED:
            assert av.fix and av.fix.startswith("pip install "), \
                f"{b.name} is not installed but its fix is {av.fix!r}; expected the exact `pip install ...`"
            requirement = av.fix.split("#")[0].removeprefix("pip install ").strip().strip("\"'")
            assert _REQUIREMENT.fullmatch(requirement), \
                f"{b.name}: fix {av.fix!r} names no installable requirement (expected e.g. pip install \"name[extra]\")"
            if b.extra:
                assert f'"motorpool[{b.extra}]"' in av.fix, \
                    f"{b.name}: fix {av.fix!r} does not name the extra: pip install \"motorpool[{b.extra}]\""
        elif av.status is motorpool.Status.IMPORT_FAILED:
            assert av.fix, f"{b.name}: import failed ({av.reason}) but no fix is given"

    def test_capabilities_are_well_formed(self, registered_backend):
        b = registered_backend
        caps = b.capabilities
        assert isinstance(caps, motorpool.Capabilities), f"{b.name}.capabilities is {type(caps).__name__}"
        assert re.fullmatch(r"[a-z][a-z0-9_]*", b.name), f"backend name {b.name!r} is not a lower-case identifier"
        assert caps.devices and all(isinstance(d, str) and re.fullmatch(r"[a-z][a-z0-9_]*", d)
                                    for d in caps.devices), \
            f"{b.name}: devices {caps.devices!r} must be a non-empty tuple of lower-case device kinds"
        assert "cpu" in caps.devices or set(caps.devices) & set(DEVICES), \
            f"{b.name}: devices {caps.devices!r} names none of the common kinds {DEVICES}"
        assert caps.precisions and set(caps.precisions) <= set(motorpool.PRECISIONS), \
            f"{b.name}: precisions {sorted(caps.precisions)} must be a non-empty subset of {motorpool.PRECISIONS}"
        assert caps.compile_cost in COMPILE_COSTS, \
            f"{b.name}: compile_cost {caps.compile_cost!r} not in {COMPILE_COSTS}"
        assert caps.native_inputs in ("torch", "numpy"), f"{b.name}: native_inputs {caps.native_inputs!r}"
        for flag in ("dynamic_batch", "dynamic_shapes", "thread_safe", "serializable"):
            assert isinstance(getattr(caps, flag), bool), f"{b.name}: capability {flag} must be a bool"
        json.dumps(caps.to_dict())

    # -- compile and run ------------------------------------------------------------------------------------

    def test_compile_and_run(self, compiled, backend, backend_device):
        engine = compiled.require()
        assert engine.backend == backend.name
        assert engine.precision == "fp32", f"asked for fp32, the engine reports {engine.precision!r}"
        assert engine.device.split(":")[0] == backend_device.split(":")[0], \
            f"asked for {backend_device}, the engine runs on {engine.device}"
        runner = engine.runner
        assert runner.native_inputs in ("torch", "numpy")
        assert not runner.thread_safe or backend.capabilities.thread_safe, \
            f"{backend.name}'s runner says thread_safe but the backend does not declare it"
        out = engine(*on_engine(engine, compiled.examples))
        for i, leaf in enumerate(pytree.tree_leaves(out)):
            assert isinstance(leaf, torch.Tensor), f"output {i} is {type(leaf).__name__}; tensors in give tensors out"
        compare_outputs(reference(compiled.model, compiled.examples), out, "fp32",
                        what=f"{backend.name} on zoo {compiled.case.name}, example inputs")

    def test_compile_leaves_the_model_unchanged(self, compiled, backend):
        """Compiling must not touch the caller's model: no weight rewritten, reordered, cast or moved, the
        mode kept (a backend that rewrites weights, as zentorch does, works on a copy)."""
        compiled.require()
        pristine, _ = compiled.case.build(batch=2)  # the same seed: the model as it was handed over
        model = compiled.model
        assert model.training == pristine.training, f"{backend.name} changed the model's train/eval mode"
        before, after = pristine.state_dict(), model.state_dict()
        assert list(after) == list(before), \
            f"{backend.name} changed the model's state_dict keys: {sorted(set(after) ^ set(before))}"
        for name, was in before.items():
            now = after[name]
            assert (now.dtype, now.device, tuple(now.shape), now.stride()) == \
                   (was.dtype, was.device, tuple(was.shape), was.stride()), \
                f"{backend.name} changed {name}: {was.dtype} {tuple(was.shape)} stride {was.stride()} on " \
                f"{was.device} -> {now.dtype} {tuple(now.shape)} stride {now.stride()} on {now.device}"
            assert torch.equal(now, was), f"{backend.name} rewrote the values of {name}"

    def test_numerics_on_fresh_inputs(self, compiled, backend):
        engine = compiled.require()
        for _ in range(2):
            seed, inputs = fresh_inputs(compiled.case, compiled.examples[0].shape[0])
            compare_outputs(reference(compiled.model, inputs), engine(*on_engine(engine, inputs)),
                            "fp32", what=f"{backend.name} on zoo {compiled.case.name}, fresh inputs seed {seed}")

    @_models("precision_models")
    def test_declared_precisions(self, backend, backend_device, zoo_model, reduced_precision, motorpool_engines):
        if reduced_precision not in backend.capabilities.precisions:
            pytest.skip(f"{backend.name} does not declare {reduced_precision} "
                        f"(declares {', '.join(sorted(backend.capabilities.precisions))})")
        if self._reduced(backend):
            self._skip_if_reduced(backend, zoo_model, self.reduced_precision_models)
        elif zoo_model not in self.precision_models:
            pytest.skip(f"{backend.name}: precisions are checked on {list(self.precision_models)}; {zoo_model} is "
                        "for backends that run the reduced zoo")
        item = motorpool_engines.get(backend, backend_device, zoo_model, reduced_precision)
        if isinstance(item.error, motorpool.UnsupportedError):
            pytest.skip(f"{backend.name} declares {reduced_precision} but not for this request: {item.error}")
        engine = item.require()
        assert engine.precision == reduced_precision, \
            f"asked for {reduced_precision}, the engine reports {engine.precision!r}"
        seed, inputs = fresh_inputs(item.case, 4)
        out = engine(*on_engine(engine, inputs))
        out = pytree.tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t,
                              out)
        compare_outputs(reference(item.model, inputs), out, reduced_precision,
                        what=f"{backend.name} at {reduced_precision} on zoo {zoo_model}, fresh inputs seed {seed}")

    def test_dynamic_batch(self, compiled, backend):
        engine = compiled.require()
        if not backend.capabilities.dynamic_batch:
            _, inputs = fresh_inputs(compiled.case, compiled.examples[0].shape[0] + 1)
            with pytest.raises(motorpool.InputError):
                engine(*on_engine(engine, inputs))
            return
        for b in self.batch_sizes:
            seed, inputs = fresh_inputs(compiled.case, b)
            compare_outputs(reference(compiled.model, inputs), engine(*on_engine(engine, inputs)),
                            "fp32", what=f"{backend.name} on zoo {compiled.case.name} at batch {b} (declares "
                                         f"dynamic_batch), fresh inputs seed {seed}")

    def test_dynamic_shapes(self, backend, backend_device, motorpool_engines):
        """Declared ``dynamic_shapes``: a named non-batch dimension takes several sizes after one compile."""
        if not backend.capabilities.dynamic_shapes:
            pytest.skip(f"{backend.name} does not declare dynamic_shapes")
        model_name, dims, seq_axis = self.dynamic_shapes_model
        item = motorpool_engines.get(backend, backend_device, model_name, dynamic_dims=dims)
        engine = item.require()
        for length in self.sequence_lengths:
            seed, inputs = fresh_inputs(item.case, 2)
            inputs = tuple(resize(x, seq_axis, length) for x in inputs)
            compare_outputs(reference(item.model, inputs), engine(*on_engine(engine, inputs)), "fp32",
                            what=f"{backend.name} (declares dynamic_shapes) on zoo {model_name} with dimension "
                                 f"{seq_axis} = {length}, fresh inputs seed {seed}")

    def test_numpy_in_numpy_out(self, compiled, backend):
        engine = compiled.require()
        seed, inputs = fresh_inputs(compiled.case, compiled.examples[0].shape[0])
        out = engine(*[x.numpy() for x in inputs])
        for i, leaf in enumerate(pytree.tree_leaves(out)):
            assert isinstance(leaf, np.ndarray), f"output {i} is {type(leaf).__name__}: NumPy in must give NumPy out"
        out = pytree.tree_map(lambda a: torch.from_numpy(np.ascontiguousarray(a)), out)
        compare_outputs(reference(compiled.model, inputs), out, "fp32",
                        what=f"{backend.name} on zoo {compiled.case.name}, NumPy inputs seed {seed}")

    def test_bad_inputs_raise_input_error(self, compiled):
        engine = compiled.require()
        problems = []
        for description, name, call in bad_calls(engine, compiled.examples):
            try:
                engine(*call)
            except motorpool.InputError as exc:
                if name is not None and exc.input != name:
                    problems.append(f"{description}: InputError names input {exc.input!r}, expected {name!r}")
                elif not str(exc).strip():
                    problems.append(f"{description}: InputError with an empty message")
            except Exception as exc:  # noqa: BLE001 - any other error is the finding
                problems.append(f"{description}: raised {type(exc).__name__}: {exc}, expected motorpool.InputError")
            else:
                problems.append(f"{description}: no error raised, expected motorpool.InputError")
        assert not problems, "bad inputs not rejected as motorpool.InputError:\n  " + "\n  ".join(problems)

    # -- threads ---------------------------------------------------------------------------------------------

    def _thread_inputs(self, compiled: Compiled) -> tuple[list, list]:
        draws = [fresh_inputs(compiled.case, 2)[1] for _ in range(self.threads)]
        return draws, [pytree.tree_flatten(reference(compiled.model, x))[0] for x in draws]

    def _check_threads(self, results, expected, precision: str, what: str) -> None:
        problems = []
        for i, (outs, exp) in enumerate(zip(results, expected)):
            if len(outs) != self.calls_per_thread:
                problems.append(f"thread {i}: {len(outs)} results for {self.calls_per_thread} calls")
            for k, got in enumerate(outs):
                if isinstance(got, BaseException):
                    problems.append(f"thread {i} call {k}: raised {type(got).__name__}: {got}")
                    continue
                figures = compare(exp, got, tolerance_for(precision))
                if not figures["passed"]:
                    problems.append(f"thread {i} call {k}: result does not match its own input: {figures['problem']}")
        assert not problems, f"{what}:\n  " + "\n  ".join(problems[:20])

    @_models("thread_models")
    def test_concurrent_calls_through_engine(self, compiled, backend):
        """Always: the Engine is thread-safe whatever the backend (it locks a runner that is not)."""
        engine = compiled.require()
        draws, expected = self._thread_inputs(compiled)
        results = run_threads(lambda x: pytree.tree_flatten(engine(*on_engine(engine, x)))[0],
                              draws, calls_per_thread=self.calls_per_thread)
        self._check_threads(results, expected, "fp32",
                            f"{backend.name}: {self.threads} threads calling one engine on zoo {compiled.case.name}")

    @_models("thread_models")
    def test_declared_thread_safety_of_runner(self, compiled, backend):
        """A backend declaring ``thread_safe`` is called on its runner directly, with no lock in between."""
        if not backend.capabilities.thread_safe:
            pytest.skip(f"{backend.name} does not declare thread_safe: the Engine serializes its calls "
                        "(checked by test_concurrent_calls_through_engine)")
        engine = compiled.require()
        runner = engine.runner
        kind = runner.native_inputs
        draws, expected = self._thread_inputs(compiled)
        per_thread = [[native(t, kind) for t in on_engine(engine, x)] for x in draws]
        results = run_threads(runner.run, per_thread, calls_per_thread=self.calls_per_thread)
        self._check_threads(results, expected, "fp32",
                            f"{backend.name} declares thread_safe, but {self.threads} threads calling its runner "
                            f"directly on zoo {compiled.case.name} disagree")

    # -- save and load -----------------------------------------------------------------------------------------

    def test_save_load_in_fresh_process(self, backend, backend_device, motorpool_engines, tmp_path, request):
        """Save every compiled zoo engine, then load and run them all in one fresh Python process."""
        subset = self.reduced_roundtrip if self._reduced(backend) else self.roundtrip_models
        models = [m for m in self.zoo_models if m in subset] or list(self.zoo_models[:1])
        if not backend.capabilities.serializable:
            engine = motorpool_engines.get(backend, backend_device, models[0]).require()
            with pytest.raises(motorpool.UnsupportedError):
                engine.save(tmp_path / "engine")
            assert not (tmp_path / "engine").exists(), "a refused save left a directory behind"
            return
        items, expected, gapped, problems = [], {}, [], []
        for m in models:
            gap = known_gap(request.node, backend.name, m, per_model_only=True)
            if gap is not None:
                gapped.append(f"{m} ({gap.describe()})")
                continue
            compiled = motorpool_engines.get(backend, backend_device, m)
            if compiled.error is not None:
                problems.append(f"{m}: compile failed: {type(compiled.error).__name__}: {compiled.error}")
                continue
            try:
                path = compiled.engine.save(tmp_path / m)
            except Exception as exc:  # noqa: BLE001 - declared serializable: every failure is a finding
                problems.append(f"{m}: save failed though {backend.name} declares serializable: "
                                f"{type(exc).__name__}: {exc}")
                continue
            seed, inputs = fresh_inputs(compiled.case, 3)
            in_paths = []
            for i, x in enumerate(inputs):
                p = tmp_path / f"{m}.in{i}.npy"
                np.save(p, x.numpy())
                in_paths.append(str(p))
            out_dir = tmp_path / f"{m}.out"
            out_dir.mkdir()
            expected[m] = (seed, reference(compiled.model, inputs))
            items.append({"model": m, "path": str(path), "inputs": in_paths, "out": str(out_dir)})
        if items:
            job = {"backend": backend.name, "items": items, "preamble": self.child_preamble}
            proc = subprocess.run([sys.executable, "-c", CHILD_SCRIPT, json.dumps(job)], capture_output=True, text=True,
                                  timeout=self.child_timeout_s, cwd=tmp_path)
            assert proc.returncode == 0, (f"the fresh process failed to load and run the saved engines "
                                          f"(exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
            for item in items:
                m = item["model"]
                seed, ref = expected[m]
                flat, tree = pytree.tree_flatten(ref)
                got = [torch.from_numpy(np.load(Path(item["out"]) / f"{i}.npy")) for i in range(len(flat))]
                try:
                    compare_outputs(ref, pytree.tree_unflatten(got, tree), "fp32",
                                    what=f"{backend.name} zoo {m} loaded in a fresh process, inputs seed {seed}")
                except AssertionError as exc:
                    problems.append(str(exc))
        assert not problems, "save/load round trip:\n  " + "\n  ".join(problems)
        if gapped:
            print(f"known gaps left out of the round trip: {'; '.join(gapped)}")
