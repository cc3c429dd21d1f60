"""Conformance checks of issue 13: odd memory layouts give the right answer, and compiling leaves the model alone.

Mixed into :class:`motorpool.testing.conformance.BackendConformance`, so every backend plugin runs them:

- the zoo's conv model fed channels_last, transposed, sliced, Fortran-order, negative-stride and big-endian
  inputs (torch tensors and NumPy arrays), each compared with eager PyTorch on the same values;
- compiling a model leaves its parameters and buffers unchanged, bit for bit (a backend that rewrites
  weights in place, as some CPU backends do, must work on a copy).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch


from . import zoo
from .checks import compare_outputs, fresh_inputs, reference


def _layouts(x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Views of ``x`` (N, C, H, W) with the same values and another memory layout."""
    n, c, h, w = x.shape
    a = x.numpy()
    return {
        "channels_last": lambda: x.contiguous(memory_format=torch.channels_last),
        "transposed": lambda: x.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0),
        "sliced": lambda: torch.repeat_interleave(x, 2, dim=3)[..., ::2],
        "numpy-fortran": lambda: np.asfortranarray(a),
        "numpy-negative-strides": lambda: np.flip(np.flip(a, axis=3).copy(), axis=3),
        "numpy-transposed": lambda: np.ascontiguousarray(a.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0),
        "numpy-big-endian": lambda: a.astype(">f4"),
    }


class InputLayoutConformance:
    """Checks mixed into ``BackendConformance`` (uses its fixtures and helpers)."""

    layout_model: str = "cnn"

    def test_input_layouts(self, backend, backend_device, motorpool_engines):
        compiled = motorpool_engines.get(backend, backend_device, self.layout_model)
        engine = compiled.require()
        if torch.device(engine.input_spec.device).type != "cpu":
            pytest.skip(f"{backend.name} on {backend_device} takes {engine.input_spec.device} tensors; the layout "
                        "checks feed host memory")
        seed, (x,) = fresh_inputs(zoo.get(self.layout_model), 3)
        want = reference(compiled.model, (x,))
        problems = []
        for name, make in _layouts(x).items():
            value = make()
            np.testing.assert_array_equal(np.asarray(value if isinstance(value, np.ndarray) else value.numpy(),
                                                     dtype=np.float32), x.numpy())
            try:
                got = engine(value)
                if isinstance(got, np.ndarray):
                    got = torch.from_numpy(got)
                compare_outputs(want, got, "fp32",
                                            what=f"{backend.name} on a {name} input (seed {seed})")
            except AssertionError as exc:
                problems.append(str(exc).splitlines()[0])
            except Exception as exc:  # noqa: BLE001 - a layout the engine cannot take is a finding too
                problems.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
        assert not problems, f"{backend.name} gives wrong answers or errors for valid inputs in other memory " \
                             "layouts:\n  " + "\n  ".join(problems)
