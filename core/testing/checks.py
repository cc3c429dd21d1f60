"""What the conformance suite (:mod:`.conformance`) runs its checks with: engines compiled once per session
(:class:`EngineCache`, which the pytest plugin's ``motorpool_engines`` fixture holds), fresh random inputs
and comparisons with eager PyTorch, the bad calls every engine must refuse, many threads at once, and the
child process that loads a saved engine fresh."""

from __future__ import annotations

import json
import secrets
import textwrap
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

import motorpool

from ..pipeline.verify import compare, tolerance_for
from . import zoo


# -- compiling once per session ----------------------------------------------------------------------------

@dataclass
class Compiled:
    """One zoo model compiled by one backend: the engine, or the error its compile raised."""

    backend: str
    device: str
    case: zoo.ZooCase
    precision: str
    model: torch.nn.Module
    examples: tuple[torch.Tensor, ...]
    engine: Any = None
    error: BaseException | None = None

    def require(self) -> Any:
        """The engine; re-raises the compile error (so every check on this model reports it)."""
        if self.error is not None:
            raise self.error
        return self.engine


class EngineCache:
    """Compiled engines by (backend, device, model, precision): each compiles once per test session."""

    def __init__(self) -> None:
        self._items: dict[tuple, Compiled] = {}
        self._lock = threading.Lock()

    def get(self, backend: Any, device: str, model_name: str, precision: str = "fp32",
            dynamic_dims: dict[str, dict[int, str]] | None = None) -> Compiled:
        key = (backend.name, device, model_name, precision, json.dumps(dynamic_dims, sort_keys=True))
        with self._lock:
            if key in self._items:
                return self._items[key]
            case = zoo.get(model_name)
            model, examples = case.build(batch=2)
            item = Compiled(backend.name, device, case, precision, model, examples)
            calibration = None
            if precision == "int8":
                calibration = [fresh_inputs(case, 2, seed)[1] for seed in range(8)]
            try:
                item.engine = motorpool.compile(
                    model, examples, backend=backend.name, device=device, precision=precision,
                    dynamic_batch=backend.capabilities.dynamic_batch, dynamic_dims=dynamic_dims, verify=True,
                    calibration=calibration, cache=False)
            except Exception as exc:  # noqa: BLE001 - recorded, re-raised by every check that needs it
                item.error = exc
            self._items[key] = item
            return item

    def clear(self) -> None:
        self._items.clear()


# -- inputs and comparisons --------------------------------------------------------------------------------

def fresh_inputs(case: zoo.ZooCase, batch: int, seed: int | None = None) -> tuple[int, tuple[torch.Tensor, ...]]:
    """(seed, inputs): fresh random inputs for a zoo model, drawn from its own input recipe.

    The seed is drawn fresh unless given, and reported by every failing check so it can be replayed.
    Floating inputs are checked to be finite and not all zeros.
    """
    seed = secrets.randbits(31) if seed is None else seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inputs = case.inputs(batch)
    for i, x in enumerate(inputs):
        if x.dtype.is_floating_point:
            assert bool(torch.isfinite(x).all()) and bool(x.abs().sum() > 0), \
                f"zoo {case.name}: input {i} drawn with seed {seed} is degenerate (zeros or non-finite)"
    return seed, inputs


def reference(model: torch.nn.Module, inputs) -> Any:
    with torch.inference_mode():
        return model(*inputs)


def compare_outputs(expected: Any, actual: Any, precision: str, *, what: str) -> dict[str, Any]:
    """Assert ``actual`` has ``expected``'s structure, shapes and dtypes, and matches it at ``precision``.

    NaN or Inf where the reference is finite fails; figures are in the assertion message.
    """
    exp_flat, exp_tree = pytree.tree_flatten(expected)
    act_flat, act_tree = pytree.tree_flatten(actual)
    assert act_tree == exp_tree, f"{what}: output structure {act_tree}, expected {exp_tree}"
    for i, (e, a) in enumerate(zip(exp_flat, act_flat)):
        a_shape = tuple(a.shape)
        assert a_shape == tuple(e.shape), f"{what}: output {i} has shape {list(a_shape)}, expected {list(e.shape)}"
        a_dtype = str(a.dtype).removeprefix("torch.")
        e_dtype = str(e.dtype).removeprefix("torch.")
        if precision == "fp32":
            assert a_dtype == e_dtype, f"{what}: output {i} has dtype {a_dtype}, expected {e_dtype}"
    figures = compare(exp_flat, act_flat, tolerance_for(precision))
    assert figures["passed"], f"{what}: does not match eager PyTorch at {precision}: {figures['problem']} " \
                              f"(figures {figures})"
    return figures


def _first_static_axis(shape) -> int | None:
    for axis, d in enumerate(shape):
        if not isinstance(d, str):
            return axis
    return None


def bad_calls(engine: Any, examples: tuple[torch.Tensor, ...]) -> list[tuple[str, str | None, tuple]]:
    """(description, input name the error must name or None, the bad call's inputs) for every kind of bad input."""
    spec = engine.input_spec
    first, name = examples[0], spec.inputs[0].name
    rest = tuple(examples[1:])
    calls: list[tuple[str, str | None, tuple]] = [
        ("one input too many", None, tuple(examples) + (examples[-1],)),
        ("no inputs", None, ()),
        ("rank one higher", name, (first.unsqueeze(0),) + rest),
        ("rank one lower", name, (first[0],) + rest),
        ("wrong dtype (float64)" if first.dtype.is_floating_point else "wrong dtype (int32)", name,
         ((first.double() if first.dtype.is_floating_point else first.to(torch.int32)),) + rest),
        ("NumPy array of the wrong dtype", name,
         ((first.double() if first.dtype.is_floating_point else first.to(torch.int16)).numpy(),)
         + tuple(x.numpy() for x in rest)),
        ("tensor on another device (meta)", name, (first.to("meta"),) + rest),
        ("a Python list instead of a tensor", name, (first.tolist(),) + rest),
        ("None instead of a tensor", name, (None,) + rest),
        ("a string instead of a tensor", name, ("not a tensor",) + rest),
    ]
    if len(examples) > 1:
        calls.append(("one input missing", None, tuple(examples[:-1])))
    axis = _first_static_axis(spec.inputs[0].shape)
    if axis is not None:
        shape = list(first.shape)
        shape[axis] += 1
        calls.append((f"dimension {axis} one larger than the static {spec.inputs[0].shape[axis]}", name,
                      (torch.ones(shape, dtype=first.dtype) if not first.dtype.is_floating_point
                       else torch.randn(shape, dtype=first.dtype),) + rest))
    return calls


def run_threads(fn: Callable[[Any], Any], inputs: list[Any], *, calls_per_thread: int) -> list[list[Any]]:
    """Call ``fn`` from one thread per input, all released at once; every thread's results, or errors."""
    barrier = threading.Barrier(len(inputs))
    results: list[list[Any]] = [[] for _ in inputs]

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            for _ in range(calls_per_thread):
                results[i].append(fn(inputs[i]))
        except BaseException as exc:  # noqa: BLE001 - reported by the check, per thread
            results[i].append(exc)

    threads = [threading.Thread(target=work, args=(i,), name=f"conformance-{i}") for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def on_engine(engine: Any, inputs) -> list[torch.Tensor]:
    """``inputs`` on the device the engine's input spec expects (CPU tensors for a non-torch device such as
    Core ML's "ane": the runtime moves data itself)."""
    try:
        device = torch.device(engine.input_spec.device)
    except (RuntimeError, TypeError):
        return list(inputs)
    return [x.to(device) for x in inputs]


def resize(x: torch.Tensor, axis: int, length: int) -> torch.Tensor:
    """``x`` with dimension ``axis`` cut or extended (by tiling its own values: still fresh, never zeros)."""
    reps = -(-length // x.shape[axis])
    tiled = x.repeat(*[reps if d == axis else 1 for d in range(x.dim())])
    return tiled.narrow(axis, 0, length).contiguous()


def native(x: torch.Tensor, kind: str) -> Any:
    return x.detach().cpu().numpy() if kind == "numpy" else x


# -- the fresh-process round trip ----------------------------------------------------------------------------

CHILD_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch.utils._pytree as pytree
    import motorpool
    job = json.loads(sys.argv[1])
    exec(job["preamble"])
    for item in job["items"]:
        engine = motorpool.load(item["path"], trust_code=True)  # the suite's own engines, saved a moment ago
        assert engine.backend == job["backend"], (engine.backend, job["backend"])
        inputs = [np.load(p) for p in item["inputs"]]
        out = pytree.tree_flatten(engine(*inputs))[0]
        for i, x in enumerate(out):
            if not isinstance(x, np.ndarray):
                raise SystemExit(f"{item['model']}: output {i} is {type(x).__name__}; NumPy in must give NumPy out")
            np.save(f"{item['out']}/{i}.npy", x)
        print("loaded and ran", item["model"], engine.backend, engine.device, flush=True)
""")
