"""Static batching: engine.map over samples, small batches and DataLoaders; padding only for static shapes."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import motorpool
from motorpool import InputError
from motorpool.engine.batching import map_batches
from motorpool.testing import zoo

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


class Recording:
    """Wraps an engine and records the batch shape of every call (to see how map cut the batches)."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def __call__(self, *inputs):
        self.calls.append(tuple(inputs[0].shape))
        return self.engine(*inputs)


@pytest.fixture(scope="module")
def mlp_dynamic():
    model, x = zoo.get("mlp").build(batch=4)
    return model, motorpool.compile(model, x, backend="eager")


@pytest.fixture(scope="module")
def mlp_static():
    model, x = zoo.get("mlp").build(batch=4)
    return model, motorpool.compile(model, x, backend="eager", dynamic_batch=False)


def test_single_samples_in_order_full_batches(mlp_dynamic):
    model, engine = mlp_dynamic
    xs = [torch.randn(32) for _ in range(10)]
    rec = Recording(engine)
    out = list(map_batches(rec, xs, batch_size=4))
    assert rec.calls == [(4, 32), (4, 32), (2, 32)]  # dynamic batch: the last one runs short, unpadded
    assert len(out) == 10
    for x, y in zip(xs, out):
        assert y.shape == (10,)
        torch.testing.assert_close(y, model(x[None])[0], **TOL)


def test_static_engine_pads_last_batch_and_trims(mlp_static):
    model, engine = mlp_static
    xs = [torch.randn(32) for _ in range(10)]
    rec = Recording(engine)
    out = list(map_batches(rec, xs))  # batch_size defaults to the static batch
    assert rec.calls == [(4, 32), (4, 32), (4, 32)]
    assert len(out) == 10 and all(y.shape == (10,) for y in out)
    torch.testing.assert_close(torch.stack(out), model(torch.stack(xs)), **TOL)
    with pytest.raises(ValueError, match="static batch of 4"):
        engine.map(xs, batch_size=8)


def test_small_batches_split_across_batches(mlp_dynamic):
    model, engine = mlp_dynamic
    items = [torch.randn(n, 32) for n in (3, 5, 1, 7, 2)]
    rec = Recording(engine)
    out = list(map_batches(rec, items, batch_size=4))
    assert [c[0] for c in rec.calls] == [4, 4, 4, 4, 2]  # 18 rows: items straddle batch boundaries
    for x, y in zip(items, out):
        assert y.shape == (x.shape[0], 10)
        torch.testing.assert_close(y, model(x), **TOL)


def test_structured_outputs_numpy_and_dataloader():
    model, x = zoo.get("two_inputs").build(batch=2)
    engine = motorpool.compile(model, x, backend="eager")
    a, b = torch.randn(13, 16), torch.randn(13, 8)
    loader = DataLoader(TensorDataset(a, b), batch_size=3)  # yields [a_batch, b_batch] lists
    out = list(engine.map(loader, batch_size=5))
    assert [y.shape[0] for y in out] == [3, 3, 3, 3, 1]
    torch.testing.assert_close(torch.cat(out), model(a, b), **TOL)

    model, x = zoo.get("dict_out").build(batch=2)
    engine = motorpool.compile(model, x, backend="eager")
    xs = [np.random.default_rng(i).standard_normal(12).astype(np.float32) for i in range(7)]
    out = list(engine.map(xs, batch_size=3))
    for v, y in zip(xs, out):
        ref = model(torch.from_numpy(v)[None])
        assert isinstance(y["logits"], np.ndarray) and y["logits"].shape == (5,)
        np.testing.assert_allclose(y["extra"][0], ref["extra"][0][0].numpy(), **TOL)


def test_lazy_and_bad_items_named(mlp_dynamic):
    _, engine = mlp_dynamic
    consumed = []

    def gen():
        for i in range(100):
            consumed.append(i)
            yield torch.randn(32)

    it = engine.map(gen(), batch_size=4)
    next(it)
    assert len(consumed) <= 5  # reads only what the first batch needs
    with pytest.raises(InputError, match=r"item 2, input 'x': expected rank 2 \(a batch\) or 1"):
        list(engine.map([torch.randn(32), torch.randn(32), torch.randn(2, 2, 32)], batch_size=2))
    with pytest.raises(InputError, match="expected shape"):
        list(engine.map([torch.randn(31)]))
    with pytest.raises(ValueError, match="batch_size"):
        engine.map([], batch_size=0)
    assert list(engine.map([], batch_size=4)) == []
