"""modhifi-llm on random-initialised small decoders (Llama MHA and GQA, Qwen2, Mistral) with
their default use_cache: KV groups and FFN channels pruned layer by layer, compensation,
save / reload, and bad input refused before any work."""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import pluginedit as pe  # noqa: E402
from pluginedit.core.errors import InputError  # noqa: E402
from pluginedit.editors.common.compensate import refit_linear  # noqa: E402
from pluginedit.editors.llm.calib import capture, run_block, token_batches  # noqa: E402
from pluginedit.editors.llm.select import modhifi_removal  # noqa: E402
from pluginedit.graph.decoder import decoder_blocks  # noqa: E402

VOCAB = 128
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    max_position_embeddings=64,
    tie_word_embeddings=True,
)
ARCHS = {
    "llama-mha": (
        LlamaForCausalLM,
        LlamaConfig,
        dict(num_attention_heads=4, num_key_value_heads=4),
    ),
    "llama-gqa": (
        LlamaForCausalLM,
        LlamaConfig,
        dict(num_attention_heads=8, num_key_value_heads=2),
    ),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, dict(num_attention_heads=8, num_key_value_heads=4)),
    "mistral": (
        MistralForCausalLM,
        MistralConfig,
        dict(num_attention_heads=8, num_key_value_heads=2),
    ),
}


def make(arch: str, seed: int = 0):
    cls, cfg, heads = ARCHS[arch]
    torch.manual_seed(seed)
    model = cls(cfg(**COMMON, **heads)).eval()
    with torch.no_grad():
        # correlated activations, as trained models have (anisotropic, low-rank embeddings):
        # with independent random features no refit can recover a removed one
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(VOCAB, 12) @ torch.randn(12, emb.shape[1]) / 3)
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.normal_(0, 0.05)
    return model


def tokens(n: int, t: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def rel_error(model, dense_logits, ids) -> float:
    with torch.no_grad():
        out = model(input_ids=ids).logits
    return float((out - dense_logits).pow(2).mean() / dense_logits.pow(2).mean())


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_prunes_groups_and_channels_keeping_integer_gqa(arch):
    model = make(arch)
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    t = time.perf_counter()
    rec = pe.edit(model, "modhifi-llm", data=tokens(16), params=0.4, attn=0.5, progress=False)
    assert time.perf_counter() - t < 30
    for b in decoder_blocks(model):
        assert b.num_kv_heads == kv // 2 and b.num_heads == heads // 2
        assert b.num_heads % b.num_kv_heads == 0 and b.group_size == heads // kv
        assert b.attn.num_key_value_groups == heads // kv
    assert model.config.num_key_value_heads == kv // 2 and model.config.head_dim == 64 // heads
    removed = 1 - rec.info["params_after"] / rec.info["params_before"]
    assert removed > 0.1
    ids = tokens(2, 10, seed=5)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
        out = model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False)  # cache on
    assert out.shape == (1, 10)


@pytest.mark.parametrize("arch", ["llama-gqa", "qwen2"])
def test_compensation_brings_logits_closer_to_dense(arch):
    calib, held = tokens(32, seed=1), tokens(8, seed=2)
    dense = make(arch)
    with torch.no_grad():
        ref = dense(input_ids=held).logits
    errors = {}
    for comp in (True, False):
        model = make(arch)
        pe.edit(
            model, "modhifi-llm", data=calib, ffn=0.5, attn=0.5, compensate=comp, progress=False
        )
        errors[comp] = rel_error(model, ref, held)
    assert errors[True] < 0.9 * errors[False]


def test_modhifi_removal_picks_the_unit_whose_refit_loses_least():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g, dtype=torch.float64) @ torch.randn(
        12, 12, generator=g, dtype=torch.float64
    )
    gram = x.T @ x / len(x)
    w = torch.randn(5, 12, generator=g, dtype=torch.float64)
    units = torch.arange(12).reshape(4, 3)
    exact = []
    for u in range(4):
        keep = torch.ones(12, dtype=torch.bool)
        keep[units[u]] = False
        new, _, _ = refit_linear(w, gram, keep, ridge=0.0)
        d = w - new
        exact.append(float(torch.trace(d @ gram @ d.T)))
    removed, losses = modhifi_removal(w, gram, units, 1, rounds=1, ridge=1e-10)
    assert removed == [min(range(4), key=exact.__getitem__)]
    assert losses[0] == pytest.approx(min(exact), rel=1e-4)


def test_captured_activations_reproduce_the_model():
    model = make("llama-gqa")
    ids = tokens(4)
    blocks = decoder_blocks(model)
    states, kwargs, _ = capture(model, blocks, token_batches(ids, VOCAB, 2))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    after0 = torch.cat(run_block(blocks[0], states, kwargs[0]))
    torch.testing.assert_close(torch.cat(states), hidden[0])
    torch.testing.assert_close(after0, hidden[1], rtol=1e-5, atol=1e-5)


def test_save_pretrained_reloads_exactly(tmp_path):
    model = make("llama-gqa")
    pe.edit(model, "modhifi-llm", data=tokens(16), params=0.3, attn=0.5, progress=False)
    model.save_pretrained(tmp_path / "hf")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = tokens(2, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0
        )
    pe.save(model, tmp_path / "pe")
    back = pe.load(tmp_path / "pe")
    with torch.no_grad():
        torch.testing.assert_close(
            back(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0
        )


@pytest.mark.parametrize(
    "data, options, match",
    [
        (tokens(4), dict(params=1.5), "params"),
        (tokens(4), dict(attn=1.0), "attn"),
        (tokens(4), dict(), "needs params"),
        (tokens(4), dict(params=0.05, attn=0.5), "lower attn"),
        (tokens(4).float(), dict(params=0.2), "integers"),
        (tokens(4) + VOCAB, dict(params=0.2), "vocabulary"),
        ([1, 2, 3], dict(params=0.2), "input_ids"),
    ],
)
def test_bad_input_refused_and_model_untouched(data, options, match):
    model = make("llama-gqa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match=match):
        pe.edit(model, "modhifi-llm", data=data, progress=False, **options)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.num_key_value_heads == 2


def test_non_decoder_refused():
    cnn = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(InputError, match="no decoder blocks"):
        pe.edit(cnn, "modhifi-llm", data=tokens(4), params=0.2, progress=False)
