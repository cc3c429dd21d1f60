"""``motorpool compile MODEL -o DIR``: compile, verify and save an engine directory that ``run`` and
``motorpool.load`` read."""

from __future__ import annotations

from ._args import add_model_argument


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile MODEL for a backend, verify it, save the engine to a directory")
    add_model_argument(p)
    p.add_argument("-o", "--output", required=True, help="directory to write the engine to")
    p.add_argument("--backend", default="auto", help="a backend name, a comma-separated list to try in order, "
                   "'auto' or 'fastest' (default auto)")
    p.add_argument("--precision", default="fp32", help="fp32, fp16, bf16 or int8 (default fp32)")
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
    try:
        loaded = load_model(args.model)
        engine = motorpool.compile(loaded.model, loaded.example_inputs, backend=backend, device=args.device,
                                   precision=args.precision, dynamic_batch=not args.static_batch,
                                   verify=not args.no_verify, cache=False if args.no_cache else None)
        path = engine.save(args.output, overwrite=args.overwrite)
    except motorpool.MotorpoolError as exc:
        print(f"error: {exc}")
        return 1
    print(engine.report)
    print(f"inputs  {engine.input_spec.describe()}")
    print(f"saved   {path}")
    return 0
