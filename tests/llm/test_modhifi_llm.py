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
from pluginedit.editors.llm.plan import adaptive, uniform_groups  # noqa: E402
from pluginedit.editors.llm.select import full_refit, inverse_gram, obs_removal  # noqa: E402
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


def _problem(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(400, n, generator=g, dtype=torch.float64) @ torch.randn(
        n, n, generator=g, dtype=torch.float64
    )
    w = torch.randn(5, n, generator=g, dtype=torch.float64)
    return x, w


def _exact_loss(w, gram, keep):
    new, _, _ = refit_linear(w, gram, keep, ridge=0.0)
    d = w - new
    return float(torch.trace(d @ gram @ d.T)), new


def test_obs_removal_picks_the_unit_whose_refit_loses_least():
    x, w = _problem()
    gram = x.T @ x / len(x)
    units = torch.arange(12).reshape(4, 3)
    exact = []
    for u in range(4):
        keep = torch.ones(12, dtype=torch.bool)
        keep[units[u]] = False
        exact.append(_exact_loss(w, gram, keep)[0])
    removed, losses, _ = obs_removal(w.clone(), inverse_gram(gram, 1e-10), units, 1, step=1)
    assert removed == [min(range(4), key=exact.__getitem__)]
    assert losses[0] == pytest.approx(min(exact), rel=1e-4)


@pytest.mark.parametrize("step", [1, 3])
def test_obs_downdates_give_the_least_squares_refit_of_the_kept_set(step):
    # several units removed by rank-k downdates of H and W: the summed step losses and the
    # weights left equal the exact refit of the final kept set (one solve from scratch)
    x, w = _problem(seed=3, n=16)
    gram = x.T @ x / len(x)
    units = torch.arange(16)[:, None]
    removed, losses, new = obs_removal(w.clone(), inverse_gram(gram, 1e-12), units, 6, step)
    keep = torch.ones(16, dtype=torch.bool)
    keep[removed] = False
    loss, ref = _exact_loss(w, gram, keep)
    torch.testing.assert_close(new, ref, rtol=1e-6, atol=1e-8)
    assert sum(losses) == pytest.approx(loss, rel=1e-6)


def test_cross_target_refit_regresses_onto_the_dense_output():
    # inputs drifted from the dense ones: W* = W C G^-1 then the greedy gives the least-squares
    # map from the drifted kept inputs to the dense outputs
    x, w = _problem(seed=4, n=10)
    g = torch.Generator().manual_seed(9)
    drift = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    gram, cross = drift.T @ drift / len(x), x.T @ drift / len(x)
    h = inverse_gram(gram, 1e-12)
    units = torch.arange(10)[:, None]
    removed, _, new = obs_removal(full_refit(w, cross, h), h, units, 3, 1)
    keep = torch.ones(10, dtype=torch.bool)
    keep[removed] = False
    sol = torch.linalg.lstsq(drift[:, keep], x @ w.T).solution.T
    torch.testing.assert_close(new[:, keep], sol, rtol=1e-6, atol=1e-8)
    assert (new[:, ~keep] == 0).all()


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


def test_adaptive_meets_the_parameter_target_and_reloads_with_pe_load(tmp_path):
    model = make("llama-gqa")
    blocks0 = sum(b.params() for b in decoder_blocks(model))
    rec = pe.edit(
        model, "modhifi-llm", data=tokens(16), params=0.3, allocation="adaptive", progress=False
    )
    blocks = decoder_blocks(model)
    removed = 1 - sum(b.params() for b in blocks) / blocks0
    per_channel = blocks[0].channel_params() / blocks0
    assert abs(removed - 0.3) <= per_channel + 1e-9
    assert all(b.num_heads % b.num_kv_heads == 0 for b in blocks)
    assert rec.info["config_describes_model"] == (len({b.ffn_width for b in blocks}) == 1)
    pe.save(model, tmp_path / "pe")
    ids = tokens(2, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(
            pe.load(tmp_path / "pe")(input_ids=ids).logits, model(input_ids=ids).logits
        )


def test_global_ranking_takes_cheap_kv_groups_and_spares_costly_blocks():
    model = make("llama-gqa")
    blocks = decoder_blocks(model)
    ch, gp = blocks[0].channel_params(), blocks[0].group_params()
    width = blocks[0].ffn_width
    # block 0: channels cheap, its groups dear; block 1: every channel dear, a group cheap
    cheap = torch.linspace(0, 1e-3, width).cumsum(0)
    dear = torch.linspace(1, 2, width).cumsum(0)
    curves = [
        {"attn": torch.tensor([0.0, 50.0]), "ffn": torch.cat([torch.zeros(1), cheap])},
        {"attn": torch.tensor([0.0, 1e-4 * gp / ch]), "ffn": torch.cat([torch.zeros(1), dear])},
    ]
    share = (gp + 20 * ch) / sum(b.params() for b in blocks)
    plan = adaptive(blocks, curves, share)
    assert plan == [(0, 20), (1, 0)]
    # uniform: the same group count everywhere (a share per block); block 0's dear group
    # keeps it at zero, until that group is cheap too
    share = (gp + 20 * ch) / blocks[0].params()
    assert uniform_groups(blocks, curves, share) == 0
    curves[0]["attn"] = torch.tensor([0.0, 1e-4 * gp / ch])
    assert uniform_groups(blocks, curves, share) == 1


def test_opt_heads_and_ffn_pruned_and_ffn_only_reloads_with_from_pretrained(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    def opt():
        torch.manual_seed(0)
        cfg = OPTConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
        )
        return OPTForCausalLM(cfg).eval()

    ids = tokens(8, 16)
    model = opt()
    rec = pe.edit(model, "modhifi-llm", data=ids, params=0.3, attn=0.25, progress=False)
    assert [b.num_heads for b in decoder_blocks(model)] == [3, 3]
    assert rec.info["config_describes_model"] is False  # OPT derives head_dim from the heads
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
        assert model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False).shape == (1, 8)
    model = opt()
    rec = pe.edit(model, "modhifi-llm", data=ids, ffn=0.3, progress=False)
    assert rec.info["config_describes_model"] and model.config.ffn_dim == 45
    model.save_pretrained(tmp_path / "hf")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)
