"""Arguments the subcommands share: MODEL, comma-separated lists."""

from __future__ import annotations

import argparse

MODEL_HELP = ("package.module:factory (a callable returning (model, example_inputs)), a torch.export .pt2 "
              "file, or zoo:NAME for a built-in test model; never a pickle")


#: what --precision takes; "auto" searches backend x precision under a gate
PRECISION_CHOICES = ("fp32", "fp16", "bf16", "int8", "auto")


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)


def csv_list(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def csv_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def load_model_arg(ref: str, *, batch: int | None = None):
    from .modelref import load_model

    return load_model(ref, batch=batch)


def faithfulness_gate(loaded, max_drop: float):
    """A :class:`motorpool.Gate` on fresh random inputs of the model's spec (no user data on the command line):
    the metric says how faithful an engine is to the model, not how accurate it is on a task."""
    import torch

    from .. import Gate
    from ..measuring.technique_report import default_metric
    from ..plugin.spec import InputSpec

    spec = InputSpec.from_examples(loaded.example_inputs)
    gen = torch.Generator().manual_seed(7)
    data = [tuple(spec.random_inputs(generator=gen)) for _ in range(4)]
    return Gate(default_metric(loaded.model, loaded.example_inputs), data, max_drop)


def shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """``--shape NAME=1,3,224,224`` (NAME: input0, input1... or the input's position 0, 1...)."""
    name, sep, dims = str(text).partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name.strip() or not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"expected NAME=D0,D1,... with positive sizes (e.g. input0=1,3,224,224), "
                                         f"got {text!r}")
    return name.strip(), shape


def with_shapes(examples: tuple, shapes: list[tuple[str, tuple[int, ...]]] | None) -> tuple:
    """``examples`` with the inputs named in ``shapes`` replaced by fresh random tensors of that shape (same
    dtype; integer inputs within the range the example showed)."""
    import torch

    from ._output import UsageError

    if not shapes:
        return examples
    out = list(examples)
    names = [f"input{i}" for i in range(len(examples))]
    gen = torch.Generator().manual_seed(11)
    for name, shape in shapes:
        i = int(name) if name.isdigit() else (names.index(name) if name in names else -1)
        if not 0 <= i < len(examples):
            raise UsageError(f"--shape {name}=...: the model has no input {name!r}; its inputs are "
                             + ", ".join(f"{n} {list(x.shape)}" for n, x in zip(names, examples)))
        x = examples[i]
        if len(shape) != x.dim():
            raise UsageError(f"--shape {name}={','.join(map(str, shape))}: {name} has {x.dim()} dimensions "
                             f"(example {list(x.shape)}), got {len(shape)}")
        if x.dtype.is_floating_point:
            out[i] = torch.randn(shape, generator=gen).to(x.dtype)
        elif x.dtype == torch.bool:
            out[i] = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            lo, hi = int(x.min()), int(x.max())
            out[i] = torch.randint(lo, hi + 1, shape, generator=gen).to(x.dtype)
    return tuple(out)


def precision_list(text: str) -> list[str]:
    """``--precisions fp32,int8``: each one of the precisions motorpool builds."""
    values = csv_list(text)
    bad = [v for v in values if v not in PRECISION_CHOICES[:-1]]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected comma-separated precisions from "
                                         f"{', '.join(PRECISION_CHOICES[:-1])}, got {text!r}")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
