"""``motorpool.plugin.own_frame``: every engine compiled with torch.compile gets a dynamo cache of its own."""

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

from motorpool.plugin import own_frame


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.layer = nn.Linear(8, width)

    def forward(self, x):
        return self.layer(x).relu()


def _graphs(wrap) -> int:
    """How many graphs dynamo compiled for four engines of one class, with room for two per code object."""
    # dynamo's own patcher: its config module is not a plain module (monkeypatch's undo deleted the setting)
    with torch._dynamo.config.patch(recompile_limit=2):
        torch._dynamo.reset()
        counters.clear()
        for width in (4, 5, 6, 7):
            torch.manual_seed(width)
            model = Net(width).eval()
            compiled = torch.compile(own_frame(model) if wrap else model, backend="eager")
            x = torch.randn(3, 8)
            with torch.inference_mode():
                torch.testing.assert_close(compiled(x), model(x))
        graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return graphs


def test_engines_of_one_class_do_not_share_a_dynamo_cache():
    before = torch._dynamo.config.recompile_limit
    # without it, the third and fourth engines fall back to eager once the shared cache is full
    assert _graphs(False) == 2
    assert _graphs(True) == 4
    assert torch._dynamo.config.recompile_limit == before  # the setting is back as it was


def test_the_frame_keeps_the_modules_mode_and_outputs():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval()
    frame = own_frame(model)
    assert not frame.training and frame.module is model
    assert own_frame(model).forward.__code__ is not frame.forward.__code__
    x = torch.randn(2, 4)
    torch.testing.assert_close(frame(x), model(x))
    with pytest.raises(TypeError):
        frame(x, x, x)
