"""Small models that exercise what backends get wrong: several inputs, dict/tuple/nested outputs,
BatchNorm, convolutions, recurrent layers, attention, integer token inputs. Random weights, built on the fly.

Each :class:`ZooCase` builds ``(model, example_inputs)`` at a given batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in=32, hidden=64, d_out=10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, d_out))

    def forward(self, x):
        return self.net(x)


class TwoInputs(nn.Module):
    """Two inputs of different shapes, one tensor out."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(8, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, features, context):
        return self.head(torch.tanh(self.a(features) + self.b(context)))


class DictOut(nn.Module):
    """A dict of outputs, one of them nested in a tuple."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(12, 24)
        self.cls = nn.Linear(24, 5)
        self.reg = nn.Linear(24, 2)

    def forward(self, x):
        h = torch.relu(self.body(x))
        logits = self.cls(h)
        return {"logits": logits, "box": self.reg(h), "extra": (h.mean(dim=1), torch.softmax(logits, dim=-1))}


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 20)

    def forward(self, x):
        h = self.fc(x)
        return h, torch.sigmoid(h).sum(dim=1, keepdim=True)


class SmallCNN(nn.Module):
    """Conv + BatchNorm + residual + pooling: the ResNet pattern, small."""

    def __init__(self, channels=16, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU(),
                                   nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


class GRUModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, h = self.rnn(x)
        return self.head(out[:, -1])


class LSTMModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, (h, c) = self.rnn(x)
        return self.head(out[:, -1]), h.transpose(0, 1)


class Encoder(nn.Module):
    """Token ids + attention mask -> pooled embedding: embeddings, self-attention, LayerNorm, masking."""

    def __init__(self, vocab=100, dim=32, heads=4, layers=2, max_len=64):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.tok(input_ids) + self.pos(positions)[None]
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        h = self.norm(h)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class Attention(nn.Module):
    """nn.MultiheadAttention over float features."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.out(y + x)


@dataclass(frozen=True)
class ZooCase:
    name: str
    description: str
    factory: Callable[[], nn.Module]
    inputs: Callable[[int], tuple[torch.Tensor, ...]]
    tags: frozenset[str] = field(default_factory=frozenset)

    def build(self, batch: int = 2, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        torch.manual_seed(seed)
        model = self.factory().eval()
        return model, self.inputs(batch)


def _tokens(batch: int, seq: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[:, seq - 3:] = 0  # padding at the end, and the mask's range then covers both 0 and 1
    return ids, mask


ZOO: dict[str, ZooCase] = {c.name: c for c in [
    ZooCase("mlp", "3-layer MLP", MLP, lambda b: (torch.randn(b, 32),), frozenset({"linear"})),
    ZooCase("two_inputs", "two inputs of different shapes", TwoInputs,
            lambda b: (torch.randn(b, 16), torch.randn(b, 8)), frozenset({"multi_input"})),
    ZooCase("dict_out", "dict output with a nested tuple", DictOut, lambda b: (torch.randn(b, 12),),
            frozenset({"structured_output"})),
    ZooCase("tuple_out", "tuple output", TupleOut, lambda b: (torch.randn(b, 10),),
            frozenset({"structured_output"})),
    ZooCase("cnn", "conv + BatchNorm + residual, 3x32x32", SmallCNN, lambda b: (torch.randn(b, 3, 32, 32),),
            frozenset({"conv"})),
    ZooCase("gru", "GRU over 10 steps", GRUModel, lambda b: (torch.randn(b, 10, 8),), frozenset({"recurrent"})),
    ZooCase("lstm", "2-layer LSTM, tuple output", LSTMModel, lambda b: (torch.randn(b, 10, 8),),
            frozenset({"recurrent", "structured_output"})),
    ZooCase("attention", "multi-head self-attention", Attention, lambda b: (torch.randn(b, 12, 32),),
            frozenset({"attention"})),
    ZooCase("encoder", "transformer encoder on token ids + mask", Encoder, _tokens,
            frozenset({"attention", "int_inputs", "multi_input"})),
]}


def get(name: str) -> ZooCase:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"no zoo model {name!r}; choose one of: {', '.join(ZOO)}") from None
