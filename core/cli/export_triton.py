"""``motorpool export-triton DIR REPO``: write a saved engine into an NVIDIA Triton model repository
(``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/<model file>``), ready for
``tritonserver --model-repository=REPO``."""

from __future__ import annotations

import sys

from motorpool.cli._args import csv_ints


def register(sub) -> None:
    p = sub.add_parser("export-triton", help="write a saved engine into a Triton model repository")
    p.add_argument("engine", metavar="DIR", help="an engine directory written by `motorpool compile`")
    p.add_argument("repo", metavar="REPO", help="the model repository folder (created)")
    p.add_argument("--name", default=None, help="the model's name in Triton (default: the folder's name)")
    p.add_argument("--version", type=int, default=1, help="the version folder to write (1)")
    p.add_argument("--max-batch-size", type=int, default=8, help="Triton's max_batch_size (8)")
    p.add_argument("--preferred-batch-sizes", type=csv_ints, default=None, metavar="N,N",
                   help="dynamic_batching preferred_batch_size, comma-separated (default: none, Triton's choice)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000,
                   help="dynamic_batching max_queue_delay_microseconds (2000)")
    p.add_argument("--no-dynamic-batching", action="store_true", help="leave the dynamic_batching block out")
    p.add_argument("--instance-kind", choices=["cpu", "gpu"], default=None,
                   help="instance_group kind (default: from the engine's device)")
    p.add_argument("--instances", type=int, default=1, help="instance_group count (1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    p.set_defaults(func=run)


def run(args) -> int:
    import motorpool
    from motorpool.serving.triton import export_triton

    try:
        model_dir = export_triton(args.engine, args.repo, name=args.name, version=args.version,
                                  max_batch_size=args.max_batch_size,
                                  preferred_batch_sizes=args.preferred_batch_sizes,
                                  max_queue_delay_us=args.max_queue_delay_us, instance_kind=args.instance_kind,
                                  instance_count=args.instances, dynamic_batching=not args.no_dynamic_batching,
                                  overwrite=args.overwrite)
    except (motorpool.MotorpoolError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad argument value
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    print(f"wrote {model_dir}: {', '.join(files)}")
    print(f"serve it: docker run --rm -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/{args.repo}:/models "
          "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")
    return 0
