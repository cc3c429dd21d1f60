"""Fake backends for tests/test_select.py. They live in a module of their own so that ``fastest``'s child
processes can import them by ``module:qualname``, as they would an installed plugin's backend."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any


from motorpool import Availability, Backend, Capabilities, CompileOptions, Runner, UnsupportedError
from motorpool.plugin.helpers import TorchRunner

#: set by a test to let an in-process "hangy" compile return (so no thread outlives the test run)
RELEASE = threading.Event()


class _ModuleRunner(TorchRunner, Runner):
    def __init__(self, module, options: CompileOptions, *, delay_s: float = 0.0, scale: float = 1.0):
        self._init_torch(module, device=options.device, precision=options.precision, info={"runtime": "fake"})
        self.delay_s = delay_s
        self.scale = scale

    def run(self, inputs: list[Any]) -> list[Any]:
        if self.delay_s:
            time.sleep(self.delay_s)
        out = super().run(inputs)
        return [o * self.scale for o in out] if self.scale != 1.0 else out

    def save(self, directory: Path) -> dict[str, Any]:
        raise UnsupportedError("fake runners are not serializable", backend="fake")


class _Fake(Backend):
    def availability(self) -> Availability:
        return Availability.ok(version="1.0", devices=["cpu"], versions={"fake": "1.0"})

    def load(self, directory: Path, metadata: dict[str, Any], options: CompileOptions) -> Runner:
        raise UnsupportedError("fake backends do not load", backend=self.name)


class CrashyBackend(_Fake):
    """Its compiler aborts the process, as a native compiler's bug would."""

    name = "crashy"
    capabilities = Capabilities(compile_cost="high", priority={"*": 5})

    def compile(self, model, example_inputs, options):
        os.abort()


class HangyBackend(_Fake):
    """Its compiler never returns (until RELEASE is set, in this process)."""

    name = "hangy"
    capabilities = Capabilities(compile_cost="high", priority={"*": 6})

    def compile(self, model, example_inputs, options):
        RELEASE.wait()
        raise RuntimeError("released")


class WrongBackend(_Fake):
    """Compiles, but computes the wrong numbers."""

    name = "wrong"
    capabilities = Capabilities(compile_cost="none", priority={"*": 7})

    def compile(self, model, example_inputs, options):
        return _ModuleRunner(model, options, scale=1.5)


class SlowBackend(_Fake):
    """Right numbers, 20 ms late on every call."""

    name = "slow"
    capabilities = Capabilities(compile_cost="none", priority={"*": 8})

    def compile(self, model, example_inputs, options):
        return _ModuleRunner(model, options, delay_s=0.02)


class LaggardBackend(_Fake):
    """Right numbers, 5 ms late on every call, and ranked first: a declared rank that timing must overrule."""

    name = "laggard"
    capabilities = Capabilities(compile_cost="none", priority={"*": 1})

    def compile(self, model, example_inputs, options):
        return _ModuleRunner(model, options, delay_s=0.005)


class LateBackend(_Fake):
    """Right numbers, 5 ms late on every call."""

    name = "late"
    capabilities = Capabilities(compile_cost="none", priority={"*": 9})

    def compile(self, model, example_inputs, options):
        return _ModuleRunner(model, options, delay_s=0.005)


class PromptBackend(_Fake):
    """Right numbers at once, ranked just behind "laggard" (a close call)."""

    name = "prompt"
    capabilities = Capabilities(compile_cost="none", priority={"*": 4})

    def compile(self, model, example_inputs, options):
        return _ModuleRunner(model, options)


class BrokenBackend(_Fake):
    """Ranked close behind the others; its compiler always fails."""

    name = "broken"
    capabilities = Capabilities(compile_cost="none", priority={"*": 5})

    def compile(self, model, example_inputs, options):
        raise RuntimeError("this compiler is broken")


class _CallerFastRunner(_ModuleRunner):
    """20 ms late when called from the thread ``fastest`` runs an in-process candidate in, prompt elsewhere."""

    def run(self, inputs: list[Any]) -> list[Any]:
        if threading.current_thread().name == "motorpool-candidate":
            time.sleep(0.02)
        return super().run(inputs)


class FickleBackend(_Fake):
    """Right numbers; slow when timed apart from the caller, prompt in the caller's own thread: the separate
    measurement ranks it far behind, and only a run-off in the caller's process shows what the caller gets."""

    name = "fickle"
    capabilities = Capabilities(compile_cost="none", priority={"*": 10})

    def compile(self, model, example_inputs, options):
        return _CallerFastRunner(model, options)
