"""The planning curves' KV-group cost is the error of the block's output (the refit o_proj and
the block's own FFN run), the point where an FFN channel's cost is measured too."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from pluginedit.editors.llm.calib import capture, output, rows, run_block, token_batches  # noqa: E402
from pluginedit.editors.llm.editor import ModHiFiLLM  # noqa: E402
from pluginedit.editors.llm.plan import loss_curves  # noqa: E402
from pluginedit.editors.llm.select import inverse_gram, obs_removal, units_of  # noqa: E402
from pluginedit.graph.decoder import decoder_blocks, keep_groups, matrix  # noqa: E402

VOCAB = 96


def make():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.normal_(0, 0.1)
    return model


@torch.no_grad()
def test_kv_group_cost_is_the_block_output_error_of_the_cut_and_refit_block():
    model = make()
    ids = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(1))
    blocks = decoder_blocks(model)
    states, kwargs, masks = capture(model, blocks, token_batches(ids, VOCAB))
    opts = ModHiFiLLM(params=0.3, kv_plan=True).options
    curves = loss_curves(blocks, states, kwargs, masks, opts)
    block = blocks[0]
    dense = torch.cat(run_block(block, states, kwargs[0]))
    scale = float(dense.square().sum(-1).mean())
    a = torch.cat([rows(x, None) for x in _o_inputs(block, states, kwargs[0])])
    w, h = matrix(block.o).double(), inverse_gram(a.double().T @ a.double() / len(a), opts.ridge)
    units = units_of(block, "attn")
    for g in (1, 2):  # the cheapest g groups by their o_proj loss, refit, then cut for real
        order = obs_removal(w.clone(), h.clone(), units, g, 1)[0]
        cut = make()
        b = decoder_blocks(cut)[0]
        new = obs_removal(w.clone(), h.clone(), units[order], g, g)[2]
        matrix(b.o).copy_(new.float())
        keep_groups(b, sorted(set(range(4)) - set(order)))
        err = torch.cat(run_block(b, states, kwargs[0])) - dense
        expected = float(err.square().sum(-1).mean()) / scale
        assert float(curves[0]["attn"][g]) == pytest.approx(expected, rel=1e-4)
    assert curves[0]["attn"][1] > 0 and curves[1]["attn"][0] == 0


def _o_inputs(block, states, kwargs):
    seen = []
    handle = block.o.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        for x, kw in zip(states, kwargs):
            output(block.layer(x, **kw))
    finally:
        handle.remove()
    return seen
