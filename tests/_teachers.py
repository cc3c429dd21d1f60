"""A bigger digits classifier than tests/_digits.py's: the teacher for distillation and the accurate end of a
cascade. 64 -> 128 -> 128 -> 10, 26,122 parameters; its student (64 -> 32 -> 10, 2,410) is a tenth its size."""

from __future__ import annotations

import functools

import torch
from torch import nn

import _digits


def teacher_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def student_mlp(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@functools.lru_cache(maxsize=None)
def trained_teacher() -> nn.Module:
    """Trained on the digits training split (seeded); callers must not modify it."""
    torch.manual_seed(0)
    return _digits.train(teacher_mlp(), flat=True, epochs=20)


@functools.lru_cache(maxsize=None)
def trained_fast() -> nn.Module:
    """_digits' small MLP (64 -> 64 -> 32 -> 10), seeded before it is built, so its weights do not depend on
    what ran earlier in the process; callers must not modify it."""
    torch.manual_seed(2)
    return _digits.train(_digits.digits_mlp(), flat=True)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
