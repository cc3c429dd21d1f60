"""``motorpool profile MODEL|ENGINE_DIR``: where a call's time goes, and the backend's top operators."""

from __future__ import annotations

import json

from ._args import MODEL_HELP, PRECISION_CHOICES
from ._output import library_output


def register(sub) -> None:
    p = sub.add_parser("profile", help="split a call's time into conversion and backend; top operators")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP + "; or a directory saved by `motorpool compile`")
    p.add_argument("--backend", default="auto", help="backend to compile MODEL for (ignored for a saved engine)")
    p.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES[:-1])
    p.add_argument("--batch", type=int, default=None, help="batch size of the profiled call (default: the examples')")
    p.add_argument("--calls", type=int, default=50, help="timed calls (default 50)")
    p.add_argument("--top", type=int, default=10, help="operators to list (default 10)")
    p.add_argument("--trust-code", action="store_true",
                   help="load an engine whose format is code (TorchScript, TensorRT, pickled payloads); see SECURITY.md")
    p.add_argument("--numpy", action="store_true", help="call with NumPy arrays instead of torch tensors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import motorpool
    from ..measuring.benchmark import inputs_at_batch
    from .modelref import load_model
    from ..measuring.profiling import profile

    with library_output(getattr(args, "verbose", False)):
        if Path(args.model).is_dir():
            engine = motorpool.load(args.model, trust_code=args.trust_code)
            examples = None
        else:
            loaded = load_model(args.model, batch=args.batch)
            engine = motorpool.compile(loaded.model, loaded.example_inputs, backend=args.backend,
                                       precision=args.precision)
            examples = loaded.example_inputs
        batch = args.batch or (examples[0].shape[0] if examples else engine.input_spec.example_sizes.get("batch", 1))
        inputs = inputs_at_batch(engine.input_spec, batch, examples)
        if args.numpy:
            inputs = tuple(x.numpy() for x in inputs)
        result = profile(engine, inputs, calls=args.calls, top=args.top)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    return 0
