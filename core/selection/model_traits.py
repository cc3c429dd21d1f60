"""What kind of model this is, read from the operators of one eager run, for ``auto``'s priority keys.

The run goes through a ``TorchFunctionMode``, which sees every ``torch`` function the model calls before it is
lowered (``F.scaled_dot_product_attention``, ``torch.lstm``, ``F.conv2d``, ``torch.matmul``...): what a
captured graph would hold, at the cost of one forward pass and without exporting. The kind is the most telling
one found (:data:`motorpool.plugin.priority.KINDS`): recurrent, then attention, then convolution, else dense; a
ViT (a patch convolution, then attention) is an attention model. The traits add ``causal`` (masked
self-attention, as in decoders), ``dynamic`` (a dynamic dimension other than the batch) and the precision.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode, resolve_name

from ..plugin.helpers import first_line
from ..plugin.spec import BATCH, InputSpec

_RECURRENT = {"lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"}
_ATTENTION = {"scaled_dot_product_attention", "multi_head_attention_forward", "flex_attention"}
_CONVOLUTION = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                "convolution"}
_BATCHED_MATMUL = {"matmul", "__matmul__", "bmm", "baddbmm", "einsum"}
_SOFTMAX = {"softmax", "_softmax", "log_softmax"}
_CAUSAL_MASK = {"tril", "triu", "tril_", "triu_"}
#: the functions worth naming in the report
_COUNTED = _RECURRENT | _ATTENTION | _CONVOLUTION | _BATCHED_MATMUL | _SOFTMAX | _CAUSAL_MASK | {"linear"}


@dataclass(frozen=True)
class ModelTraits:
    """The model's kind, its traits (the kind among them) and the telling functions it called, counted."""

    kind: str
    traits: frozenset[str] = frozenset()
    calls: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "traits": sorted(self.traits), "calls": dict(self.calls)}
        if self.note:
            out["note"] = self.note
        return out


class _Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()
        self.causal = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = (resolve_name(func) or getattr(func, "__name__", "")).rsplit(".", 1)[-1]
        if name in _COUNTED:
            self.calls[name] += 1
            if name == "scaled_dot_product_attention" and kwargs.get("is_causal"):
                self.causal = True
        return func(*args, **kwargs)


def kind_of(calls: dict[str, int]) -> str:
    """The model kind the counted calls show."""
    names = set(calls)
    if names & _RECURRENT:
        return "recurrent"
    if names & _ATTENTION or (names & _SOFTMAX and names & _BATCHED_MATMUL):
        return "attention"
    if names & _CONVOLUTION:
        return "convolution"
    return "dense"


def read_traits(model: torch.nn.Module, examples: tuple, spec: InputSpec, precision: str) -> ModelTraits:
    """Run ``model`` once on ``examples`` and read its traits. A model this cannot run (it already ran once
    in ``prepare``, so that is rare) is taken as dense, and the note says why."""
    recorder = _Recorder()
    note = ""
    try:
        with torch.inference_mode(), recorder:
            model(*examples)
    except Exception as exc:  # noqa: BLE001 - the ranking then falls back to the kind-free keys
        note = f"the model's kind could not be read: {first_line(exc)}"
    calls = dict(sorted(recorder.calls.items()))
    kind = kind_of(calls)
    traits = {kind, precision}
    if kind == "attention" and (recorder.causal or set(calls) & _CAUSAL_MASK):
        traits.add("causal")
    if spec.dynamic_dims - {BATCH}:
        traits.add("dynamic")
    return ModelTraits(kind, frozenset(traits), calls, note)
