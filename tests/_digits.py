"""A tiny classifier trained on scikit-learn's digits (8x8 images, 10 classes): real data for accuracy checks.

Trained once per process (a few seconds on 2 cores); random-weight models hide quantization damage.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.features(x))


def digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@functools.lru_cache(maxsize=None)
def digits_data():
    """(x_train, y_train, x_test, y_test): images scaled to [0, 1], shaped [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def train(model: nn.Module, *, flat: bool, epochs: int = 15, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is fastest, and kind to a shared machine
    xtr, ytr, _, _ = digits_data()
    if flat:
        xtr = xtr.flatten(1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    torch.set_num_threads(threads)
    return model.eval()


@functools.lru_cache(maxsize=None)
def trained(kind: str) -> nn.Module:
    """"mlp" (inputs [N, 64]) or "cnn" (inputs [N, 1, 8, 8]), trained; callers must not modify it."""
    if kind == "mlp":
        return train(digits_mlp(), flat=True)
    return train(DigitsCNN(), flat=False, epochs=8)


def held_out(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_data()
    return (x.flatten(1) if kind == "mlp" else x), y


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean())
