"""Compile a small CNN for the best backend here, call it like the model, save it and load it back.

    python examples/quickstart.py
"""

import tempfile

import torch

import motorpool
from motorpool.testing import zoo

model, (x,) = zoo.get("cnn").build(batch=8)

for info in motorpool.list_backends():
    print(f"{info.name:14s} {'yes' if info.available else 'no ':3s} {info.reason}")

engine = motorpool.compile(model, x)  # backend="auto": ranked for this hardware, then verified
print(engine)
print(engine.report)

y = engine(torch.randn(3, 3, 32, 32))  # any batch size
print("output", tuple(y.shape))

with tempfile.TemporaryDirectory() as d:
    try:
        engine.save(f"{d}/cnn")
    except motorpool.UnsupportedError as exc:  # some engines cannot be serialized; they say why
        print("not saved:", exc)
    else:
        # saved a line above by this script: trusted even when its format is code (TorchScript; SECURITY.md)
        again = motorpool.load(f"{d}/cnn", trust_code=True)
        torch.testing.assert_close(again(x), engine(x))
        print("saved and loaded:", again)
