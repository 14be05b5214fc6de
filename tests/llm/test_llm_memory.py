"""modhifi-llm's memory does not grow with depth: the undo state of the atomic edit is on disk
(``core.spill.SpilledSnapshot``) and the weights each block's surgery replaces are freed as the
pass goes; a failure after some blocks were cut still restores the model exactly."""

from __future__ import annotations

import gc
import tempfile
import weakref

import pytest
import torch

pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import pluginedit as pe  # noqa: E402
from pluginedit.editors.llm import editor as llm_editor  # noqa: E402

VOCAB = 96


def make(layers: int = 3):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg).eval()


def ids(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, 16), generator=torch.Generator().manual_seed(seed))


def watch_blocks(monkeypatch, after_block):
    """Call ``after_block(index)`` after each block the editor prunes."""
    real = llm_editor.prune_block

    def wrapped(block, *args, **kwargs):
        rec = real(block, *args, **kwargs)
        after_block(block.index)
        return rec

    monkeypatch.setattr(llm_editor, "prune_block", wrapped)


def test_replaced_weights_are_freed_block_by_block(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = make()
    mlps = [layer.mlp for layer in model.model.layers]
    originals = [weakref.ref(m.down_proj.weight) for m in mlps]
    alive = {}

    def after(i):
        gc.collect()
        alive[i] = [r() is not None for r in originals]

    watch_blocks(monkeypatch, after)
    pe.edit(model, "modhifi-llm", data=ids(), params=0.3, attn=0.5, progress=False)
    # the original weight of each block cut so far is gone, the later ones still there
    assert alive == {0: [False, True, True], 1: [False, False, True], 2: [False] * 3}
    assert list(tmp_path.iterdir()) == []  # the snapshot file deleted after success


def test_failure_after_some_blocks_restores_the_model_exactly(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    held = model.model.layers[0].mlp.down_proj.weight  # a reference the user holds
    with torch.no_grad():
        dense = model(input_ids=ids(2, seed=3)).logits

    def after(i):
        if i == 1:
            raise RuntimeError("stop after two blocks")

    watch_blocks(monkeypatch, after)
    with pytest.raises(Exception, match="stop after two blocks"):
        pe.edit(model, "modhifi-llm", data=ids(), params=0.3, attn=0.5, progress=False)
    after_state = model.state_dict()
    assert after_state.keys() == before.keys()
    assert all(torch.equal(before[k], after_state[k]) for k in before)
    assert model.model.layers[0].mlp.down_proj.weight is held  # identity kept
    assert model.model.layers[1].self_attn.o_proj.weight.shape == (64, 64)
    assert isinstance(model.model.layers[1].mlp.up_proj.weight, torch.nn.Parameter)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids(2, seed=3)).logits, dense, rtol=0, atol=0)
    assert list(tmp_path.iterdir()) == []
