"""``motorpool compile MODEL -o DIR``: compile, verify and save an engine directory that ``run`` and
``motorpool.load`` read."""

from __future__ import annotations

from ._args import PRECISION_CHOICES, add_model_argument
from ._output import library_output


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile MODEL for a backend, verify it, save the engine to a directory")
    add_model_argument(p)
    p.add_argument("-o", "--output", required=True, help="directory to write the engine to")
    p.add_argument("--backend", default="auto", help="a backend name, a comma-separated list to try in order, "
                   "'auto' or 'fastest' (default auto)")
    p.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                   help="auto: the fastest backend x precision whose outputs stay within --max-drop of fp32 on "
                   "random inputs of the examples' shapes")
    p.add_argument("--max-drop", type=float, default=0.01, help="--precision auto: the budget of the gate "
                   "metric's drop (top-1 agreement for [batch, classes] outputs, else cosine)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps... (default auto)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to the examples' batch")
    p.add_argument("--no-verify", action="store_true", help="skip verification against eager PyTorch")
    p.add_argument("--no-cache", action="store_true", help="compile even when the artifact cache has this engine")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    p.set_defaults(func=run)


def run(args) -> int:
    import motorpool
    from .modelref import load_model

    backend = args.backend if "," not in args.backend else [b.strip() for b in args.backend.split(",") if b.strip()]
    loaded = load_model(args.model)
    gate = None
    if args.precision == "auto":
        from ._args import faithfulness_gate

        gate = faithfulness_gate(loaded, args.max_drop)
    with library_output(getattr(args, "verbose", False)):
        engine = motorpool.compile(loaded.model, loaded.example_inputs, backend=backend, device=args.device,
                                   precision=args.precision, dynamic_batch=not args.static_batch,
                                   verify=not args.no_verify, cache=False if args.no_cache else None, gate=gate)
        path = engine.save(args.output, overwrite=args.overwrite)  # runs the model for the stored references
    print(engine.report)
    print(f"inputs  {engine.input_spec.describe()}")
    print(f"saved   {path}")
    return 0
