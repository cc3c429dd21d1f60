"""Distillation and a confidence cascade on scikit-learn digits, measured on this machine.

A wide fp32 MLP teacher (64 -> 1024 -> 1024 -> 1024 -> 10, 2.2M parameters) is trained on digits; a small student (64 -> 64 ->
10) is distilled from it and compiled int8 (ONNX Runtime static QDQ, calibrated); the teacher is compiled
fp32 on the same backend. The cascade puts the int8 student in front of the fp32 teacher and is calibrated
on one held-out split to >= 99% top-1 agreement with the teacher (with a confidence level, so it holds on
data it never saw); a second held-out split measures it. Throughput of the teacher alone, the student alone
and the cascade is timed offline in batches, interleaved round by round, so a busy machine slows every
contender alike; the speed-up is the median of the per-round ratios.

    python benchmarks/bench_cascade.py                 # about a minute on 2 cores
    python benchmarks/bench_cascade.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import torch
from torch import nn

os.environ.setdefault("MOTORPOOL_NO_CACHE", "1")

import motorpool  # noqa: E402
from motorpool.serving.cascade import Cascade  # noqa: E402
from motorpool.techniques.distill import distill  # noqa: E402


def digits_splits(seed: int = 0):
    """(train, calibration, test) splits of digits as (x [N, 64] in [0, 1], y [N])."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return (x[:1000], y[:1000]), (x[1000:1400], y[1000:1400]), (x[1400:], y[1400:])


def wide_teacher(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def student_model(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def train(model: nn.Module, x, y, *, epochs: int, lr: float, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def top1(out) -> torch.Tensor:
    return torch.as_tensor(out).argmax(-1)


def served_throughput(contenders: dict, x: torch.Tensor, args, rounds: int = 3) -> dict[str, list[float]]:
    """Samples per second with ``args.clients`` threads each submitting single digits through a batcher."""
    singles = [x[i:i + 1] for i in range(len(x))]
    out: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, engine in contenders.items():
            with motorpool.DynamicBatcher(engine, max_batch_size=args.batch, max_delay_ms=2.0,
                                          max_queue=4 * args.clients) as batcher:
                start = threading.Barrier(args.clients + 1)

                def client(i: int) -> None:
                    start.wait()
                    for s in singles[i::args.clients]:
                        batcher(s)
                threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
                for t in threads:
                    t.start()
                start.wait()
                t0 = time.perf_counter()
                for t in threads:
                    t.join()
                out[name].append(len(singles) / (time.perf_counter() - t0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=1024, help="teacher hidden width")
    ap.add_argument("--student-width", type=int, default=64)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--target", type=float, default=0.99, help="agreement with the teacher to calibrate to")
    ap.add_argument("--confidence-level", type=float, default=0.9)
    ap.add_argument("--clients", type=int, default=8, help="served: threads submitting one digit at a time")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    (xtr, ytr), (xcal, ycal), (xte, yte) = digits_splits()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    teacher = train(wide_teacher(args.width), xtr, ytr, epochs=10, lr=1e-3)
    teacher_s = time.perf_counter() - t0
    torch.manual_seed(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny student trains fastest on one thread
    student, dreport = distill(teacher, student_model(args.student_width), xtr, labels=ytr, seed=0)
    torch.set_num_threads(threads)
    print(f"teacher trained in {teacher_s:.1f}s; {dreport}", flush=True)

    example = (xtr[:args.batch],)
    calibration = [(xtr[i:i + args.batch],) for i in range(0, len(xtr), args.batch)]
    student_engine = motorpool.compile(student, example, backend=args.backend, precision="int8",
                                       calibration=calibration)
    teacher_engine = motorpool.compile(teacher, example, backend=args.backend)
    cascade = Cascade(student_engine, teacher_engine, "max_softmax")
    figures = cascade.calibrate(xcal, target_agreement=args.target, confidence_level=args.confidence_level)
    print(f"calibrated on {len(ycal)} held-out digits: {figures}", flush=True)

    with torch.no_grad():
        reference = teacher(xte).argmax(-1)
    batches = [xte[i:i + args.batch] for i in range(0, len(xte) - args.batch + 1, args.batch)] * 4
    samples = sum(len(b) for b in batches)
    contenders = {"teacher fp32 alone": teacher_engine, "student int8 alone": student_engine,
                  "cascade (student int8 -> teacher fp32)": cascade}

    def one_pass(engine) -> float:
        t = time.perf_counter()
        for b in batches:
            engine(b)
        return time.perf_counter() - t

    for engine in contenders.values():  # warm every path
        one_pass(engine)
    cascade.reset_counters()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, engine in contenders.items():
            times[name].append(one_pass(engine))
    routed = cascade.fraction_routed
    base = times["teacher fp32 alone"]

    rows = []
    for name, engine in contenders.items():
        out = torch.cat([torch.as_tensor(engine(xte[i:i + args.batch])) for i in range(0, len(xte), args.batch)])
        speedups = [b / t for b, t in zip(base, times[name])]
        rows.append({"contender": name, "throughput": samples / min(times[name]),
                     "speedup": statistics.median(speedups), "speedup_best": min(base) / min(times[name]),
                     "agreement": float((top1(out) == reference).double().mean()),
                     "accuracy": float((top1(out) == yte).double().mean()),
                     "routed": routed if engine is cascade else None})
    served = served_throughput({"teacher fp32 alone": teacher_engine,
                                "cascade (student int8 -> teacher fp32)": cascade}, xte, args)
    print(f"\n{args.backend}, batch {args.batch}, {len(yte)} test digits (x4 per round), {args.rounds} "
          f"interleaved rounds; torch threads {torch.get_num_threads()}")
    head = (f"{'contender':40s} {'samples/s':>11s} {'speed-up':>9s} {'(best)':>8s} {'agree w/ teacher':>17s} "
            f"{'accuracy':>9s} {'routed':>7s}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        routed_s = f"{r['routed']:.1%}" if r["routed"] is not None else "-"
        print(f"{r['contender']:40s} {r['throughput']:11,.0f} {r['speedup']:8.2f}x {r['speedup_best']:7.2f}x "
              f"{r['agreement']:17.2%} "
              f"{r['accuracy']:9.2%} {routed_s:>7s}")
    base_served = statistics.median(served["teacher fp32 alone"])
    for name, rates in served.items():
        print(f"served through the dynamic batcher ({args.clients} clients, one digit each, max batch "
              f"{args.batch}): {name}: {statistics.median(rates):,.0f}/s "
              f"({statistics.median(rates) / base_served:.2f}x)")
    print("speed-up: median of the per-round ratios to the teacher (best: of the best rounds); samples/s: best "
          "round; agreement, accuracy and routed: on the test split")
    print(f"\nstudent: {dreport.params_after:,} params vs the teacher's {dreport.params_before:,} "
          f"({dreport.params_before / dreport.params_after:.0f}x fewer), {dreport.flops_after:,} vs "
          f"{dreport.flops_before:,} FLOPs/sample; calibrated threshold {figures.threshold:.4g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "distill": dreport.to_dict(), "calibration": figures.to_dict(),
                       "rows": rows, "served_per_s": {k: statistics.median(v) for k, v in served.items()}},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
