"""Every input gives the right answer or a clear error (issue 13), on every CPU backend.

Layouts a user really passes (channels_last, transposed batches, slices, Fortran order, negative strides),
big-endian arrays, negative-bit and sparse tensors, and a hypothesis property test over all of them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import motorpool

hypothesis = pytest.importorskip("hypothesis", reason='hypothesis is not installed (pip install "motorpool[test]")')
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CPU_BACKENDS = ["eager", "torchscript", "onnxruntime", "openvino", "torch_compile"]
_AVAILABLE = {b.name: b for b in motorpool.list_backends()}


class Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 6 * 5, 2)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


SHAPE = (3, 6, 5)  # per sample; batch is dynamic


@pytest.fixture(scope="module", params=CPU_BACKENDS)
def compiled(request):
    name = request.param
    info = _AVAILABLE.get(name)
    if info is None or not info.available:
        pytest.skip(f"{name} is not available here: {getattr(info, 'reason', 'not registered')}")
    model = Conv().eval()
    engine = motorpool.compile(model, (torch.randn(2, *SHAPE),), backend=name, cache=False)
    return name, model, engine


def _eager(model, x) -> np.ndarray:
    t = torch.from_numpy(np.array(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x.resolve_neg().clone()
    with torch.inference_mode():
        return model(t.contiguous()).numpy()


def _check(engine, model, x) -> None:
    got = engine(x)
    got = got if isinstance(got, np.ndarray) else got.detach().numpy()
    want = _eager(model, x)
    assert np.isfinite(got).all(), f"non-finite outputs {got}"
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def _base(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, *SHAPE)


LAYOUTS = {
    "channels_last": lambda: _base().contiguous(memory_format=torch.channels_last),
    "transposed": lambda: torch.randn(SHAPE[2], SHAPE[1], SHAPE[0], 3).permute(3, 2, 1, 0),
    "sliced": lambda: torch.randn(3, SHAPE[0], SHAPE[1] * 2, SHAPE[2])[:, :, ::2],
    "numpy-fortran": lambda: np.asfortranarray(_base().numpy()),
    "numpy-negative-strides": lambda: np.flip(_base().numpy(), axis=3),
    "numpy-transposed": lambda: np.random.default_rng().standard_normal(
        (SHAPE[2], SHAPE[1], SHAPE[0], 3), dtype=np.float32).transpose(3, 2, 1, 0),
    "numpy-big-endian": lambda: _base().numpy().astype(">f4"),
    "numpy-big-endian-fortran": lambda: np.asfortranarray(_base().numpy().astype(">f4")),
    "neg-bit": lambda: torch._neg_view(_base()),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_give_the_right_answer(compiled, layout):
    name, model, engine = compiled
    x = LAYOUTS[layout]()
    _check(engine, model, x)


def test_sparse_input_is_an_input_error(compiled):
    name, model, engine = compiled
    with pytest.raises(motorpool.InputError) as info:
        engine(_base().to_sparse())
    assert info.value.input == "x" and "sparse" in str(info.value), str(info.value)
    assert info.value.expected is not None and info.value.got is not None


def test_complex_conjugate_view_is_an_input_error(compiled):
    name, model, engine = compiled
    with pytest.raises(motorpool.InputError) as info:
        engine(torch.randn(3, *SHAPE, dtype=torch.complex64).conj())
    assert info.value.input == "x"


# -- the property test ---------------------------------------------------------------------------------------

_DTYPES = ["float32", "float32", "float32", "float64", "float16", "int64"]
_KINDS = ["torch", "numpy"]
_LAYOUT_NAMES = ["contiguous", "channels_last", "transposed", "sliced", "fortran", "negative", "big-endian"]


@st.composite
def calls(draw):
    batch = draw(st.integers(1, 4))
    shape = [batch, *SHAPE]
    wrong_shape = draw(st.integers(0, 9)) == 0
    if wrong_shape:
        axis = draw(st.integers(1, 3))
        shape[axis] += draw(st.sampled_from([-1, 1, 2]))
    rank_change = draw(st.integers(0, 14)) == 0
    dtype = draw(st.sampled_from(_DTYPES))
    kind = draw(st.sampled_from(_KINDS))
    layout = draw(st.sampled_from(_LAYOUT_NAMES))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(shape=tuple(shape), rank_change=rank_change, dtype=dtype, kind=kind, layout=layout, scale=scale,
                seed=seed)


def _make(call) -> tuple[object, bool]:
    """The input, and whether the engine must accept it (its shape and dtype match the spec)."""
    rng = np.random.default_rng(call["seed"])
    shape = call["shape"]
    a = (rng.standard_normal(shape) * call["scale"]).astype(np.float32)
    if call["rank_change"]:
        a = a[..., None]
    layout = call["layout"]
    if layout == "channels_last" and a.ndim == 4:
        a = np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    elif layout == "transposed":
        a = np.ascontiguousarray(a.T).T
    elif layout == "sliced":
        wide = np.repeat(a, 2, axis=-1)
        wide[..., ::2] = a
        a = wide[..., ::2]
    elif layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "negative":
        a = np.flip(np.flip(a, axis=-1).copy(), axis=-1)
    dtype = call["dtype"]
    a = a.astype(np.dtype(dtype), copy=False) if dtype != "int64" else (a * 10).astype(np.int64)
    if layout == "big-endian":
        a = a.astype(a.dtype.newbyteorder(">"))
    x = a if call["kind"] == "numpy" else _to_torch(a)
    valid = a.shape[1:] == SHAPE and a.ndim == 4 and dtype == "float32"
    return x, valid


def _to_torch(a: np.ndarray) -> torch.Tensor:
    native = a.astype(a.dtype.newbyteorder("=")) if not a.dtype.isnative else a
    if any(s < 0 for s in native.strides):
        return torch.from_numpy(native.copy())
    return torch.from_numpy(native)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(call=calls())
def test_engine_input_handling_property(compiled, call):
    name, model, engine = compiled
    x, valid = _make(call)
    if valid:
        _check(engine, model, x)
        return
    with pytest.raises(motorpool.InputError) as info:
        engine(x)
    err = info.value
    assert err.input == "x", f"{name}: InputError does not name the input: {err}"
    assert err.expected is not None and err.got is not None, f"{name}: InputError lacks expected/got: {err}"
