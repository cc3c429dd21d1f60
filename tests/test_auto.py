"""``backend="auto"``: priority keys (hardware, CPU features, model traits), the model's kind read from its
operators, and the close call settled by timing the top two."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import motorpool
from motorpool import Capabilities
from motorpool.plugin.priority import CLEAR_CUT, UNRANKED, Key, Situation, decide
from motorpool.plugin.spec import InputSpec
from motorpool.selection.model_traits import read_traits
from motorpool.testing import zoo

sys.path.insert(0, str(Path(__file__).parent))
import _select_backends as fakes  # noqa: E402

AVX512 = frozenset({"avx2", "avx512f"})


# -- priority keys ------------------------------------------------------------------------------------

def test_the_most_specific_matching_key_decides():
    priority = {"*": 70, "cpu": 20, "cpu/attention": 18, "cpu+avx512f/attention": 10, "cpu/attention/dynamic": 25}
    attention = Situation("cpu", AVX512, frozenset({"attention", "fp32"}))
    assert decide(priority, attention) == (10, "cpu+avx512f/attention")
    # two traits outrank one trait and a feature
    assert decide(priority, Situation("cpu", AVX512, frozenset({"attention", "dynamic"}))) == (25, "cpu/attention/dynamic")
    assert decide(priority, Situation("cpu", frozenset({"avx2"}), frozenset({"attention"}))) == (18, "cpu/attention")
    assert decide(priority, Situation("cpu", AVX512, frozenset({"convolution"}))) == (20, "cpu")
    assert decide(priority, Situation("nvidia")) == (70, "*")
    assert decide({"nvidia": 1}, Situation("cpu")) == (UNRANKED, "")
    # equally specific keys: the lower rank
    both = Situation("cpu", frozenset({"amx_bf16", "avx512f"}), frozenset({"bf16"}))
    assert decide({"cpu+avx512f/bf16": 9, "cpu+amx_bf16/bf16": 5}, both) == (5, "cpu+amx_bf16/bf16")


def test_the_vendor_key_is_kept_for_old_plugins_and_matches_only_that_vendor():
    priority = {"intel-cpu": 1, "*": 50}
    assert decide(priority, Situation("cpu", vendor="GenuineIntel")) == (1, "intel-cpu")
    assert decide(priority, Situation("cpu", vendor="AuthenticAMD")) == (50, "*")
    assert decide(priority, "intel-cpu")[0] == 1 and decide(priority, "cpu")[0] == 50


@pytest.mark.parametrize("key, names", [
    ("gpu", ["'gpu'", "nvidia"]),
    ("cpu+avx512/attention", ["'avx512'", "avx512f"]),
    ("cpu/transformer", ["'transformer'", "attention"]),
    ("", ["non-empty"]),
])
def test_a_misspelled_key_is_an_error_naming_the_valid_words(key, names):
    with pytest.raises(ValueError) as info:
        Capabilities(priority={key: 1})
    assert all(n in str(info.value) for n in names), str(info.value)
    with pytest.raises(ValueError, match="integer rank"):
        Capabilities(priority={"cpu": "first"})
    assert Key.parse("*").matches(Situation("apple"))


def test_this_machines_situation_names_its_features_not_its_vendor():
    here = Situation.here({"attention"})
    hw = motorpool.hardware.detect()
    assert here.hardware == hw.hardware_class in ("nvidia", "apple", "cpu")
    assert here.features == frozenset(hw.cpu.features) and here.traits == {"attention"}


# -- the model's kind ----------------------------------------------------------------------------------

def _traits(model, inputs, precision="fp32", **spec_kwargs):
    spec = InputSpec.from_examples(list(inputs), **spec_kwargs)
    return read_traits(model.eval(), tuple(inputs), spec, precision)


@pytest.mark.parametrize("name, kind", [
    ("mlp", "dense"), ("two_inputs", "dense"), ("cnn", "convolution"), ("gru", "recurrent"), ("lstm", "recurrent"),
    ("attention", "attention"), ("encoder", "attention"),
])
def test_the_zoo_models_kinds(name, kind):
    model, inputs = zoo.ZOO[name].build(batch=2)
    traits = _traits(model, inputs)
    assert traits.kind == kind and kind in traits.traits and "fp32" in traits.traits
    assert "dynamic" not in traits.traits and "causal" not in traits.traits


class HandAttention(nn.Module):
    """Attention written out by hand (matmul, mask, softmax), causal: as older decoders do it."""

    def __init__(self, d=16):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / 4.0
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


class PatchesThenAttention(nn.Module):
    """A convolution, then attention (a ViT): attention is the more telling kind."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.attn(t, t, t, need_weights=False)[0]


def test_kinds_are_read_from_the_operators_not_the_module_types():
    hand = _traits(HandAttention(), (torch.randn(2, 6, 16),), dynamic_dims={"input0": {1: "seq"}})
    assert hand.kind == "attention" and {"causal", "dynamic"} <= hand.traits
    assert hand.calls["softmax"] == 1 and hand.calls["tril"] == 1
    vit = _traits(PatchesThenAttention(), (torch.randn(1, 3, 16, 16),), precision="bf16")
    assert vit.kind == "attention" and vit.calls["conv2d"] == 1 and "bf16" in vit.traits
    classifier = nn.Sequential(nn.Linear(8, 4), nn.Softmax(-1))  # a softmax alone is no attention
    assert _traits(classifier, (torch.randn(3, 8),)).kind == "dense"


def test_hugging_face_architectures_kinds():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2,
                                                          n_positions=32))
    ids = torch.randint(0, 64, (1, 8))
    traits = _traits(gpt2, (ids,))
    assert traits.kind == "attention" and "causal" in traits.traits
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=64))
    traits = _traits(bert, (ids,))
    assert traits.kind == "attention" and "causal" not in traits.traits
    resnet = transformers.ResNetModel(transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                                                depths=[1, 1]))
    assert _traits(resnet, (torch.randn(1, 3, 32, 32),)).kind == "convolution"


# -- the close call ------------------------------------------------------------------------------------

@pytest.fixture
def close_call(fresh_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MOTORPOOL_CACHE", str(tmp_path))  # no decision from another test
    for backend in (fakes.LaggardBackend, fakes.PromptBackend, fakes.BrokenBackend):
        fresh_registry.register(backend)
    assert fakes.PromptBackend.capabilities.rank_for("cpu") - fakes.LaggardBackend.capabilities.rank_for("cpu") \
        < CLEAR_CUT
    return fresh_registry


def test_a_close_call_is_timed_and_the_faster_kept(close_call):
    model, inputs = zoo.ZOO["mlp"].build(batch=2)
    engine = motorpool.compile(model, inputs, candidates=["laggard", "prompt"], cache=False, budget_s=0.3)
    assert engine.backend == "prompt"  # ranked second, but "laggard" sleeps 5 ms a call
    timed = engine.report.info["selection"]["timed"]
    assert timed["winner"] == "prompt" and set(timed["figures"]) == {"laggard", "prompt"}
    assert timed["figures"]["laggard"]["p50_ms"] > timed["figures"]["prompt"]["p50_ms"]
    assert "closer than" in timed["why"] and timed["budget_s"] == 0.3
    status = {c.backend: c for c in engine.report.candidates}
    assert status["prompt"].status == "chosen" and status["laggard"].status == "verified"
    assert "slower beside prompt" in status["laggard"].reason and status["laggard"].figures["runoff"]["reps"] > 0
    assert "a close call, timed side by side" in str(engine.report)
    x = torch.randn(5, 32)
    torch.testing.assert_close(engine(x), model(x))
    # remembered: the next auto for this model compiles the winner first and times nothing
    again = motorpool.compile(model, inputs, candidates=["laggard", "prompt"], cache=False, budget_s=0.3)
    sel = again.report.info["selection"]
    assert again.backend == "prompt" and sel["source"] == "decision cache" and "timed" not in sel
    assert sel["decision"] == timed["decision"] and [c.backend for c in again.report.candidates] == ["prompt"]


class EarlyBrokenBackend(fakes.BrokenBackend):
    name = "early_broken"
    capabilities = Capabilities(compile_cost="none", priority={"*": 2})


def test_a_rival_that_fails_gives_way_to_the_next_close_one(close_call):
    close_call.register(EarlyBrokenBackend)
    model, inputs = zoo.ZOO["mlp"].build(batch=2)
    engine = motorpool.compile(model, inputs, candidates=["laggard", "early_broken", "prompt"], cache=False,
                               budget_s=0.3)
    timed = engine.report.info["selection"]["timed"]
    assert engine.backend == "prompt" and set(timed["figures"]) == {"laggard", "prompt"}
    assert "early_broken did not compile: " in timed["why"]
    assert {c.backend: c.status for c in engine.report.candidates} == {
        "laggard": "verified", "early_broken": "rejected", "prompt": "chosen"}


def test_no_timing_when_told_or_when_the_rival_fails(close_call):
    model, inputs = zoo.ZOO["mlp"].build(batch=2)
    engine = motorpool.compile(model, inputs, candidates=["laggard", "prompt"], cache=False, budget_s=0)
    assert engine.backend == "laggard" and "timed" not in engine.report.info["selection"]
    assert [c.backend for c in engine.report.candidates] == ["laggard"]
    # "broken" ranks close behind "prompt": tried, failed, and "prompt" is kept with the reason said
    engine = motorpool.compile(model, inputs, candidates=["prompt", "broken"], cache=False)
    timed = engine.report.info["selection"]["timed"]
    assert engine.backend == "prompt" and "this compiler is broken" in timed["skipped"]
    assert {c.backend: c.status for c in engine.report.candidates} == {"prompt": "chosen", "broken": "rejected"}


class DistantBackend(fakes.PromptBackend):
    name = "distant"
    capabilities = Capabilities(compile_cost="none", priority={"*": 4 + CLEAR_CUT})


def test_a_clear_call_compiles_one_backend_and_a_list_is_never_timed(fresh_registry):
    for backend in (fakes.PromptBackend, DistantBackend, fakes.SlowBackend):
        fresh_registry.register(backend)
    model, inputs = zoo.ZOO["mlp"].build(batch=2)
    engine = motorpool.compile(model, inputs, candidates=["prompt", "distant"], cache=False)
    assert engine.backend == "prompt" and [c.backend for c in engine.report.candidates] == ["prompt"]
    assert "ranked first by its declared priority (*)" in str(engine.report)
    # "slow" ranks 8 against 4, closer than CLEAR_CUT: but a list is an order to try, not a ranking
    engine = motorpool.compile(model, inputs, backend=["prompt", "slow"], cache=False)
    assert engine.backend == "prompt" and [c.backend for c in engine.report.candidates] == ["prompt"]
    assert "selection" not in engine.report.info


def test_builtin_auto_on_an_attention_model_here_reports_its_reasons():
    model, inputs = zoo.ZOO["encoder"].build(batch=2)
    engine = motorpool.compile(model, inputs, candidates=["onnxruntime", "eager"], cache=False, budget_s=0.2)
    sel = engine.report.info["selection"]
    assert sel["model"]["kind"] == "attention" and sel["situation"]["traits"] == ["attention", "fp32"]
    assert sel["ranked"][0]["backend"] == engine.backend or "timed" in sel
    assert all({"backend", "rank", "rule"} <= set(r) for r in sel["ranked"])
