"""``motorpool demo``: compile a built-in model on every available backend, verify, time, print one table."""

from __future__ import annotations

import statistics
import time

from ._output import Ticker, library_output


def register(sub) -> None:
    p = sub.add_parser("demo", help="compile a built-in model on every available backend and compare")
    p.add_argument("--model", default="cnn", choices=["cnn", "mlp", "encoder"], help="which built-in model")
    p.add_argument("--batch", type=int, default=8, help="batch size of the timed call")
    p.add_argument("--seconds", type=float, default=1.0, help="timing budget per backend")
    p.add_argument("--backends", default=None, help="comma-separated backends to try (default: every registered)")
    p.set_defaults(func=run)


def _time(engine, inputs, budget_s: float) -> tuple[float, float]:
    for _ in range(3):
        engine(*inputs)
    times = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        engine(*inputs)
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def run(args) -> int:
    import torch

    import motorpool
    from ..testing import zoo

    torch.manual_seed(0)
    case = zoo.get(args.model)
    model, examples = case.build(batch=args.batch)
    print(f"model: {case.name} ({case.description}), batch {args.batch}, inputs "
          + ", ".join(f"{tuple(x.shape)}" for x in examples))
    rows, eager_p50 = [], None
    wanted = set(args.backends.split(",")) if args.backends else None
    from ..plugin.registry import get_registry
    from .doctor import probe_backends

    names = [n for n in get_registry().names() if wanted is None or n in wanted]
    with Ticker("demo", total=len(names)) as ticker, library_output(getattr(args, "verbose", False)):
        ticker.step("probing backends")
        infos = probe_backends(names=names)
        for info in infos:
            ticker.step(f"{info.name}: compiling", advance=True)
            if not info.available:
                fix = f" (fix: {info.fix})" if info.fix else ""
                rows.append((info.name, "unavailable", info.reason + fix, None, None, None, None))
                continue
            try:
                engine = motorpool.compile(model, examples, backend=info.name)
            except motorpool.MotorpoolError as exc:
                rows.append((info.name, "failed", str(exc).splitlines()[0][:90], None, None, None, None))
                continue
            ticker.step(f"{info.name}: timing")
            row = _measure(info.name, engine, examples, args.seconds)
            if info.name == "eager":
                eager_p50 = row[4]
            rows.append(row)
    _print(rows, eager_p50)
    return 0


def _measure(name, engine, examples, seconds):
    p50, p90 = _time(engine, examples, seconds)
    v = engine.report.verification or {}
    return (name, "ok", engine.device, engine.report.compile_time_s, p50, p90, v.get("max_abs_err"))


def _print(rows, eager_p50) -> None:
    print()
    print(f"{'backend':14s} {'status':11s} {'compile s':>9s} {'p50 ms':>8s} {'p90 ms':>8s} {'vs eager':>8s} "
          f"{'max abs err':>11s}  notes")
    for name, status, note, ct, p50, p90, err in rows:
        if status != "ok":
            print(f"{name:14s} {status:11s} {'':>9s} {'':>8s} {'':>8s} {'':>8s} {'':>11s}  {note}")
            continue
        speed = f"{eager_p50 / p50:.2f}x" if eager_p50 else "-"
        print(f"{name:14s} {status:11s} {ct:9.2f} {p50 * 1e3:8.3f} {p90 * 1e3:8.3f} {speed:>8s} {err:11.2e}  "
              f"device {note}")
