"""Inputs past what an engine was built for are the caller's error, said as such (issue 16): a token id past
the vocabulary, a dynamic dimension past the bound a backend compiled for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import motorpool
from motorpool import Availability, Backend, Capabilities, Runner
from motorpool.plugin import InputSpec


class Embedder(nn.Module):
    def __init__(self, vocab: int = 50):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)

    def forward(self, ids):
        return self.emb(ids).mean(1)


def test_a_token_id_past_the_vocabulary_is_an_input_error_naming_the_range():
    model = Embedder().eval()
    ids = torch.randint(0, 50, (2, 6))
    engine = motorpool.compile(model, (ids,), backend="eager", cache=False)
    low, high = int(ids.min()), int(ids.max())
    with pytest.raises(motorpool.InputError, match=rf"input 'ids': values \d+\.\.900 lie outside the range the "
                                                   rf"examples had \({low}\.\.{high}\).*IndexError"):
        engine(torch.tensor([[1, 2, 900, 3, 4, 5]]))
    fine = torch.randint(0, 50, (3, 6))  # any valid id still works, inside the examples' range or not
    torch.testing.assert_close(engine(fine), model(fine))


def test_spec_bounds_are_checked_and_survive_a_round_trip():
    spec = InputSpec.from_examples([torch.randn(4, 8)]).with_bounds({"batch": (1, 16)})
    assert spec.check([torch.randn(16, 8)]) == {"batch": 16}
    with pytest.raises(motorpool.InputError, match=r"dimension 0 \(batch\) is 17, outside the bounds 1\.\.16"):
        spec.check([np.random.randn(17, 8).astype(np.float32)])
    assert InputSpec.from_dict(spec.to_dict()).bounds == {"batch": (1, 16)}
    with pytest.raises(ValueError, match="not dynamic dimensions"):
        spec.with_bounds({"seq": (1, 8)})


class BoundedRunner(Runner):
    dim_bounds = {"batch": (1, 8)}

    def __init__(self, model):
        self.model, self.info = model, {}

    def run(self, inputs):
        assert inputs[0].shape[0] <= 8, "the engine let a batch past the bound reach the runner"
        with torch.inference_mode():
            return [self.model(*inputs)]

    def save(self, directory):
        raise motorpool.UnsupportedError("not saved")


class BoundedBackend(Backend):
    name = "bounded"
    capabilities = Capabilities(devices=("cpu",), thread_safe=True, serializable=False)

    def availability(self):
        return Availability.ok(version="1", devices=["cpu"])

    def compile(self, model, example_inputs, options):
        return BoundedRunner(model)

    def load(self, directory, metadata, options):
        raise motorpool.UnsupportedError("not saved")


def test_a_runner_declares_its_bounds_and_the_engine_enforces_them(fresh_registry):
    fresh_registry.register(BoundedBackend)
    model = nn.Linear(4, 2).eval()
    engine = motorpool.compile(model, (torch.randn(2, 4),), backend="bounded", cache=False)
    assert engine.input_spec.bounds == {"batch": (1, 8)}
    engine(torch.randn(8, 4))
    with pytest.raises(motorpool.InputError, match=r"is 9, outside the bounds 1\.\.8 this engine was built for"):
        engine(torch.randn(9, 4))
