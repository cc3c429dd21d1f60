"""``motorpool bench MODEL``: which backend, precision and batch size for this model on this machine.

Compiles MODEL for each backend x precision, measures the scenarios (SingleStream, Offline, Server) at each
batch size, and writes a terminal table plus JSON, Markdown and a PNG chart (``--out``). MLPerf LoadGen runs
the scenarios where it is installed (``pip install "motorpool[loadgen]"``), with its VALID/INVALID verdict
beside the figures; the built-in scenarios run where it is not (``--driver``), and the output says which ran. ``--price-per-hour USD`` (what
this machine costs) adds the cost per 1000 inferences to each.

``motorpool bench compare A.json B.json ...`` puts runs from different machines side by side: throughput,
p99 and cost per 1000 inferences, per backend, precision and batch size (``--price-per-hour`` gives each
run's price, comma-separated in order, where a run did not record one)."""

from __future__ import annotations

from ._args import (add_model_argument, csv_ints, csv_list, load_model_arg, positive_int, precision_list,
                    shape_arg, with_shapes)
from . import _output
from ._output import CommandFailed, UsageError, library_output, say


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark a model across backends, precisions and batch sizes",
                       description=__doc__)
    add_model_argument(p)
    p.add_argument("runs", nargs="*", metavar="RUN.json",
                   help="with MODEL 'compare': bench.json files (from different machines) to put side by side")
    p.add_argument("--price-per-hour", default=None, metavar="USD",
                   help="what this machine costs per hour, in USD: adds cost per 1000 inferences (with 'compare': "
                   "one price for every run, or one per run, comma-separated; default: no cost figures)")
    p.add_argument("--backends", default="available",
                   help="comma-separated backend names, or 'available' (every backend that can run here)")
    p.add_argument("--precisions", default="fp32", type=precision_list, help="comma-separated: fp32,fp16,bf16,int8")
    p.add_argument("--batch-sizes", default="1,8,32", type=csv_ints, help="comma-separated batch sizes")
    p.add_argument("--scenarios", default="SingleStream,Offline",
                   help="comma-separated: SingleStream, Offline, Server (or single_stream, offline, server; "
                   "default SingleStream,Offline)")
    p.add_argument("--driver", default="auto",
                   help="who runs the scenarios: loadgen (MLPerf LoadGen), builtin (motorpool's own code), or auto "
                   "(LoadGen where it is installed; the default)")
    p.add_argument("--time-budget", type=float, default=1.0,
                   help="seconds per scenario and batch size (LoadGen's min_duration; default 1.0)")
    p.add_argument("--p99-bound-ms", type=float, default=None,
                   help="server scenario: the p99 latency bound (default: 10x single-stream p50 at batch 1, at "
                   "least 10 ms; under LoadGen its own default from the measurement, at least 10 ms)")
    p.add_argument("--server-budget", type=float, default=None, help="built-in server scenario: seconds for the "
                   "rate search (default: 5 x --time-budget; LoadGen's Server runs once, for --time-budget)")
    p.add_argument("--offline-workers", type=int, default=1, help="built-in offline scenario: threads issuing batches")
    p.add_argument("--loadgen-logs", default=None, metavar="DIR", help="keep LoadGen's log files under DIR "
                   "(default: temporary folders, removed once read)")
    p.add_argument("--no-load", action="store_true", help="skip saving and loading each engine (artifact size, "
                   "load time, cold first call)")
    p.add_argument("--no-verify", action="store_true", help="skip verifying each engine against eager PyTorch")
    p.add_argument("--out", default=None, help="directory for bench.json, bench.md and bench.png (default "
                   "motorpool-bench; 'compare' writes compare.json and compare.md there only when given)")
    p.add_argument("--stem", default=None, help="file name stem of the written files (default: bench, compare)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps...")
    p.add_argument("--threads", type=positive_int, default=None, help="run every engine on this many threads "
                   "(torch's intra-op pool, ONNX Runtime's intra_op_num_threads, OpenVINO's num_threads; "
                   "default: each runtime's own)")
    p.add_argument("--shape", type=shape_arg, action="append", default=None, metavar="NAME=D0,D1,...",
                   help="replace an example input by random data of this shape (NAME: input0, input1... or "
                   "0, 1...); repeatable (default: the examples' shapes)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout instead of the table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _backends(text: str) -> list[str]:
    import motorpool

    if text.strip() in ("available", "all"):
        rows = motorpool.list_backends()
        return [r.name for r in rows if r.available or text.strip() == "all"]
    names = csv_list(text)
    registry = motorpool.get_registry()
    for name in names:
        registry.get(name)  # an unknown name lists the valid ones
    return names


def _prices(text: str | None, count: int) -> list[float | None]:
    """``--price-per-hour``: None, one price, or ``count`` comma-separated prices (USD per hour)."""
    if text is None:
        return [None] * count
    try:
        values = [float(x) for x in csv_list(text)]
    except ValueError:
        values = []
    if len(values) not in (1, count) or any(not v > 0 for v in values):
        raise ValueError("--price-per-hour: expected one positive price in USD per hour"
                         + (f" or {count} comma-separated, one per run" if count > 1 else "") + f", got {text!r}")
    return values * count if len(values) == 1 else values


def compare_runs(args) -> int:
    """``motorpool bench compare A.json B.json ...``"""
    import json
    import sys
    from pathlib import Path

    from .. import InputError
    from ..measuring.cost import compare, load_run

    if not args.runs:
        print("motorpool bench compare: expected one or more bench.json files (written by `motorpool bench`)",
              file=sys.stderr)
        return 2
    try:
        prices = _prices(args.price_per_hour, len(args.runs))
        runs = [load_run(path) for path in args.runs]
        comparison = compare(runs, labels=_labels(args.runs), prices=prices)
    except (InputError, ValueError) as exc:
        print(f"motorpool bench compare: {exc}", file=sys.stderr)
        return 2
    print(comparison.table())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = args.stem or "compare"
        (out / f"{stem}.json").write_text(json.dumps(comparison.to_dict(), indent=2, default=str))
        (out / f"{stem}.md").write_text(comparison.markdown())
        print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}", file=sys.stderr)
    return 0


def _labels(paths: list[str]) -> list[str]:
    """Each run named by its file, or by its folder where files share a name (a/bench.json, b/bench.json)."""
    from pathlib import Path

    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    parents = [Path(p).resolve().parent.name or Path(p).stem for p in paths]
    return parents if len(set(parents)) == len(parents) else [f"{i + 1}:{s}" for i, s in enumerate(stems)]


def _what_to_bench(args) -> tuple:
    """``(loaded, examples, backends, price)`` from the command line; a bad value is a UsageError."""
    loaded = load_model_arg(args.model, batch=max(args.batch_sizes))
    examples = with_shapes(loaded.example_inputs, args.shape)
    backends = _backends(args.backends)
    try:
        price = _prices(args.price_per_hour, 1)[0]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not backends:
        raise UsageError("no backend to benchmark; `motorpool doctor` shows why each is unavailable")
    return loaded, examples, backends, price


def _checked_scenarios(args) -> list[str]:
    """The scenario keys of ``--scenarios``, with ``--driver`` checked too; a bad value is a UsageError."""
    from ..measuring.benchmark import bench_scenarios
    from ..measuring.drivers import resolve_driver

    try:
        scenarios = bench_scenarios(csv_list(args.scenarios))
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    try:
        resolve_driver(args.driver)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    except ImportError as exc:
        raise UsageError(f"--driver loadgen: {exc}") from None
    return scenarios


def _progress_callbacks(progress, task, name: str, per_engine: int) -> tuple:
    """``(on_step, on_result)`` for bench_model: advance the bar one step, or to the end of an engine."""
    finished = {"engines": 0}

    def on_step(text: str) -> None:
        progress.update(task, advance=1, description=f"bench {name}: {text}")

    def on_result(row) -> None:  # an engine that failed early skips its remaining steps
        finished["engines"] += 1
        progress.update(task, completed=per_engine * finished["engines"])

    return on_step, on_result


def run(args) -> int:
    if args.model == "compare":
        return compare_runs(args)
    if args.runs:
        raise UsageError(f"unexpected arguments {args.runs} after MODEL {args.model!r} (only "
                         "'motorpool bench compare' takes several files)")
    try:
        import rich  # noqa: F401
    except ImportError as exc:
        raise UsageError(f'motorpool bench needs {exc.name}: pip install "motorpool[bench]"') from None
    import json

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..measuring.bench_output import chart_unavailable, print_table, write_all
    from ..measuring.benchmark import bench_model, steps_per_engine

    console = Console(stderr=True, force_terminal=True if _output.FORCE_PROGRESS else None)
    scenarios = _checked_scenarios(args)
    loaded, examples, backends, price = _what_to_bench(args)
    precisions = args.precisions
    per_engine = steps_per_engine(args.batch_sizes, scenarios)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=console, transient=True,
                        disable=args.no_progress or not (_output.FORCE_PROGRESS or console.is_terminal))
    with progress, library_output(getattr(args, "verbose", False)):
        task = progress.add_task(f"bench {loaded.name}", total=per_engine * len(backends) * len(precisions))
        on_step, on_result = _progress_callbacks(progress, task, loaded.name, per_engine)
        suite = bench_model(loaded.model, examples, backends=backends, precisions=precisions,
                            batch_sizes=args.batch_sizes, scenarios=scenarios, time_budget_s=args.time_budget,
                            measure_load=not args.no_load, verify=not args.no_verify, model_name=loaded.name,
                            on_step=on_step, on_result=on_result, p99_bound_ms=args.p99_bound_ms,
                            server_budget_s=args.server_budget, offline_workers=args.offline_workers,
                            device=args.device, threads=args.threads, price_per_hour=price, driver=args.driver,
                            loadgen_logs=args.loadgen_logs)
    out, stem = args.out or "motorpool-bench", args.stem or "bench"
    if args.json:
        print(json.dumps(suite.to_dict(), indent=2, default=str))
    else:
        print_table(suite)
    if not any(r.status == "ok" for r in suite.results):
        # nothing measured: earlier results in --out stay as they were
        raise CommandFailed(f"no engine was measured, so nothing was written to {out} "
                            "(the table says why each failed)")
    paths = write_all(suite, out, stem=stem)
    for kind, path in paths.items():
        say(f"wrote {kind}: {path}")
    why = chart_unavailable()
    if why:
        say(f"motorpool: warning: no {stem}.png: {why}; wrote the rest")
    return 0
