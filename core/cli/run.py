"""``motorpool run ENGINE_DIR INPUT.npy... -o OUT_DIR``: run a saved engine on NumPy files, write NumPy files.

Inputs are read with ``allow_pickle=False`` in the engine's input order. Outputs are named after their place
in the model's output structure: ``output.npy`` for one tensor, ``output_0.npy``... for a tuple,
``output_logits.npy`` for a dict entry."""

from __future__ import annotations

import re
from pathlib import Path

from ._output import CommandFailed, UsageError, library_output


def register(sub) -> None:
    p = sub.add_parser("run", help="run a saved engine on .npy inputs and write .npy outputs")
    p.add_argument("engine", metavar="ENGINE_DIR", help="a directory written by `motorpool compile` or Engine.save")
    p.add_argument("inputs", metavar="INPUT.npy", nargs="+", help="one .npy file per model input, in order")
    p.add_argument("-o", "--output", required=True, help="directory to write the outputs to (created)")
    p.add_argument("--strict", action="store_true", help="refuse an engine made for other hardware or versions")
    p.add_argument("--trust-code", action="store_true",
                   help="load an engine whose format is code (TorchScript, TensorRT, pickled payloads); see SECURITY.md")
    p.set_defaults(func=run)


def output_names(outputs) -> list[tuple[str, object]]:
    """(file stem, array) for each tensor in the output structure, in pytree order."""
    import torch.utils._pytree as pytree

    leaves, _ = pytree.tree_flatten_with_path(outputs)
    named = []
    for path, value in leaves:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        stem = "_".join(["output"] + [re.sub(r"[^A-Za-z0-9_.-]", "_", p) for p in parts])
        named.append((stem, value))
    return named


def run(args) -> int:
    import numpy as np

    import motorpool

    arrays = []
    for f in args.inputs:
        try:
            arrays.append(np.load(f, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {f} as a .npy array (pickled object arrays are refused): {exc}")
    with library_output(getattr(args, "verbose", False)):
        engine = motorpool.load(args.engine, strict=args.strict, trust_code=args.trust_code)
        try:
            outputs = engine(*arrays)
        except motorpool.InputError as exc:  # the files do not fit the engine: a failure of this run (1)
            raise CommandFailed(str(exc)) from None
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for stem, value in output_names(outputs):
        path = out / f"{stem}.npy"
        np.save(path, np.asarray(value), allow_pickle=False)
        print(f"{path}  {np.asarray(value).dtype}{list(np.asarray(value).shape)}")
    return 0
