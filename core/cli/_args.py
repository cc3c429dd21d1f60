"""Arguments the subcommands share: MODEL, comma-separated lists."""

from __future__ import annotations

import argparse

MODEL_HELP = ("package.module:factory (a callable returning (model, example_inputs)), a torch.export .pt2 "
              "file, or zoo:NAME for a built-in test model; never a pickle")


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
