"""``motorpool optimize MODEL``: the techniques table (precision, int8, pruning, distillation, backends),
measured here. ``--student package.module:factory`` (a factory returning ``(student, example_inputs)``, like
MODEL's) adds a student distilled from MODEL, compiled and gated like every other row."""

from __future__ import annotations

import json

from ._args import MODEL_HELP, csv_list
from ._output import UsageError, library_output, say


def register(sub) -> None:
    p = sub.add_parser("optimize", help="measure each optimization technique for a model on this machine")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--batch", type=int, default=None, help="batch size of the timed call (default: the examples')")
    p.add_argument("--metric", default=None, help="gate metric: top1_agreement, cosine or max_abs_error "
                   "(default: top1_agreement for [batch, classes] outputs, else cosine)")
    p.add_argument("--max-drop", type=float, default=0.01, help="budget of the metric's drop (default 0.01)")
    p.add_argument("--techniques", type=csv_list, default=None,
                   help="comma-separated substrings of the technique names to keep (default: all)")
    p.add_argument("--quick", action="store_true", help="leave out the slow compilers (torch.compile)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds of side-by-side timing in all (default 2)")
    p.add_argument("--threads", type=int, default=None, help="run every engine on this many threads (default: "
                   "each runtime's own default)")
    p.add_argument("--student", default=None, metavar="STUDENT",
                   help="a smaller model to distill from MODEL (package.module:factory returning (student, "
                   "example_inputs)); adds the distillation rows (default: no distillation)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from .. import Gate, MotorpoolError
    from .modelref import load_model
    from ..measuring.technique_report import (default_metric, default_techniques, distillation_techniques,
                                              optimize_report)
    from ..plugin.spec import InputSpec

    try:
        loaded = load_model(args.model, batch=args.batch)
    except ImportError as exc:
        raise UsageError(f"MODEL {args.model!r}: {exc}") from None
    every = list(default_techniques())
    if args.student:
        try:
            student = load_model(args.student).model
        except (MotorpoolError, ValueError, ImportError) as exc:
            raise UsageError(f"--student: {exc}") from None
        # no training data on the command line either: the student learns the model on fresh random inputs
        every += distillation_techniques(student)
    techniques = list(every)
    if args.techniques:
        techniques = [t for t in techniques if any(k.lower() in t.name.lower() for k in args.techniques)]
        if not techniques:
            names = "; ".join(t.name for t in every)
            raise UsageError(f"--techniques {','.join(args.techniques)} matches none of: {names}")
    # no user data on the command line: fresh random inputs of the model's spec, so the metric says how
    # faithful each engine is to the model (not how accurate it is on a task)
    spec = InputSpec.from_examples(loaded.example_inputs)
    gen = torch.Generator().manual_seed(7)
    data = [tuple(spec.random_inputs(generator=gen)) for _ in range(4)]
    try:
        metric = args.metric or default_metric(loaded.model, loaded.example_inputs)
        gate = Gate(metric, data, args.max_drop)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    progress = None if args.json else say
    with library_output(getattr(args, "verbose", False)):
        report = optimize_report(loaded.model, loaded.example_inputs, gate=gate, techniques=techniques,
                                 quick=args.quick, budget_s=args.budget, progress=progress,
                                 threads=args.threads)
    if args.json:
        print(json.dumps({"model": loaded.name, **report.to_dict()}, indent=2, default=str))
    else:
        print(f"model {loaded.name}")
        print(report.table())
    return 0
