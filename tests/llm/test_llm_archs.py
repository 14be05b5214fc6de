"""modhifi-llm on every decoder family graph/decoder.py describes beyond the Llama tests:
Qwen3 (q/k norms), Gemma (gated FFN, GQA), Gemma-3 text (q/k norms, sliding-window layers,
scaled embeddings), Phi (partial rotary, fc1/fc2, biases) and GPT-2 (Conv1D layers, q/k/v packed
in c_attn): random-initialised small configs with their default use_cache, KV groups and FFN
channels pruned, saved and reloaded exactly (plain from_pretrained where the config can say the
shape; and pe.save -> pe.load), greedy generation with the cache finite, integer GQA group sizes,
in seconds."""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("transformers")
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

import pluginedit as pe  # noqa: E402
from pluginedit.graph.decoder import decoder_blocks, matrix  # noqa: E402

VOCAB = 128
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    max_position_embeddings=64,
    num_attention_heads=8,
    num_key_value_heads=2,
)
ARCHS = {
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(head_dim=8)),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(head_dim=8)),
    "gemma3": (
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        dict(head_dim=8, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
    ),
    "phi": ("PhiForCausalLM", "PhiConfig", dict(partial_rotary_factor=0.5)),
}


GPT2 = dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=8, n_positions=64, n_inner=128)


def make(arch: str):
    cls, cfg, extra = ARCHS[arch] if arch != "gpt2" else ("GPT2LMHeadModel", "GPT2Config", {})
    torch.manual_seed(0)
    config = getattr(transformers, cfg)(**(GPT2 if arch == "gpt2" else SMALL), **extra)
    model = getattr(transformers, cls)(config).eval()
    with torch.no_grad():  # weights large enough that a wrong cut shows in the logits
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.normal_(0, 0.1)
    return model


def tokens(n: int, t: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_pruned_saved_reloaded_and_generating(arch, tmp_path):
    model = make(arch)
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    ids = tokens(2, 12, seed=5)
    dense = logits(model, ids)
    t = time.perf_counter()
    rec = pe.edit(model, "modhifi-llm", data=tokens(16), params=0.4, attn=0.5, progress=False)
    assert time.perf_counter() - t < 30
    for b in decoder_blocks(model):
        assert (b.num_heads, b.num_kv_heads) == (heads // 2, kv // 2)
        assert b.num_heads % b.num_kv_heads == 0
        assert b.ffn_width < 128
    assert rec.info["config_describes_model"]
    assert model.config.num_key_value_heads == kv // 2
    assert rec.info["params_after"] < 0.8 * rec.info["params_before"]
    out = logits(model, ids)
    assert torch.isfinite(out).all() and not torch.equal(out, dense)

    model.save_pretrained(tmp_path / "hf")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(logits(again, ids), out, rtol=0, atol=0)
    pe.save(model, tmp_path / "pe")
    torch.testing.assert_close(logits(pe.load(tmp_path / "pe"), ids), out, rtol=0, atol=0)

    with torch.no_grad():  # generation with the KV cache on, as loaded
        gen = again.generate(ids[:1, :4], max_new_tokens=6, do_sample=False)
        ref = model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False)
    assert gen.shape == (1, 10) and torch.equal(gen, ref)


@pytest.mark.parametrize("arch", [*sorted(ARCHS), "gpt2"])
def test_cut_model_equals_the_dense_one_with_the_removed_units_zeroed(arch):
    """Without compensation, cutting a KV group or an FFN channel is the same function as
    zeroing its o_proj columns / down_proj column: the surgery of each family is exact."""
    model, masked = make(arch), make(arch)
    rec = pe.edit(
        model, "modhifi-llm", data=tokens(8), params=0.3, attn=0.5, method="wanda", progress=False
    )
    assert not rec.info["compensated"]
    zeroed = 0
    with torch.no_grad():
        for step in rec.steps:  # o_proj / down_proj columns (GPT-2's Conv1D: weight rows)
            if step.get("fn") == "prune_linear_in_channels":
                layer = step["module"]
            elif step.get("dim") == 0 and step.get("parameter", "").endswith(".weight"):
                layer = step["parameter"].removesuffix(".weight")
            else:
                continue
            matrix(masked.get_submodule(layer))[:, step["idxs"]] = 0
            zeroed += 1
    assert zeroed == 4  # o_proj and down_proj of both blocks
    ids = tokens(3, seed=3)
    torch.testing.assert_close(logits(model, ids), logits(masked, ids), rtol=1e-4, atol=1e-5)


def test_gpt2_heads_and_ffn_pruned_reload_with_pe_load(tmp_path):
    """GPT-2 derives head_dim from n_embd / n_head: with heads cut no config says the shape
    (config_describes_model False), so pe.load rebuilds it from the recorded steps."""
    model = make("gpt2")
    ids = tokens(2, 12, seed=5)
    rec = pe.edit(model, "modhifi-llm", data=tokens(16), params=0.3, attn=0.5, progress=False)
    attn = model.transformer.h[0].attn
    assert (attn.num_heads, attn.split_size, attn.c_attn.weight.shape) == (4, 32, (64, 96))
    assert all(b.num_heads == 4 and b.ffn_width < 128 for b in decoder_blocks(model))
    assert not rec.info["config_describes_model"] and model.config.n_head == 8
    out = logits(model, ids)
    assert torch.isfinite(out).all()
    pe.save(model, tmp_path / "pe")
    back = pe.load(tmp_path / "pe")
    torch.testing.assert_close(logits(back, ids), out, rtol=0, atol=0)
    with torch.no_grad():
        gen = back.generate(ids[:1, :4], max_new_tokens=6, do_sample=False)
        ref = model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False)
    assert gen.shape == (1, 10) and torch.equal(gen, ref)


def test_gpt2_ffn_only_reloads_with_from_pretrained(tmp_path):
    model = make("gpt2")
    ids = tokens(2, 12, seed=5)
    rec = pe.edit(model, "modhifi-llm", data=tokens(16), params=0.2, attn=0, progress=False)
    width = decoder_blocks(model)[0].ffn_width
    assert rec.info["config_describes_model"] and model.config.n_inner == width < 128
    model.save_pretrained(tmp_path / "hf")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(logits(again, ids), logits(model, ids), rtol=0, atol=0)
