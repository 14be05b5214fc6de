"""COAR: the batched masked forward equals zeroing weight slices, the estimators recover exact
attributions where the model is additive in the masks, LDS is high on a real CNN, and the coar
scorer prunes like any scorer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pluginedit as pe
from pluginedit.core.components import groups
from pluginedit.core.errors import InputError
from pluginedit.scorers.coar import estimate, gradient_times_parameter, lds, leave_one_out
from pluginedit.scorers.masks import (
    component_slices,
    keep_gradients,
    keep_masks,
    margins,
    masked_outputs,
)
from pluginedit.stats import AblationSums


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 7, 3, padding=1, bias=False),
        nn.BatchNorm2d(7),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(7, 5),
        nn.ReLU(),
        nn.Linear(5, 4),
    ).eval()


def _zeroed(model, slices, mask):
    """A copy with every ablated component's weight slice zeroed (bias and BN untouched)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p, s, w in slices:
            m.get_submodule(p).weight[~mask[s : s + w]] = 0
    return m


def test_masked_forward_equals_weight_zeroing():
    model, x = _cnn(), torch.randn(5, 3, 7, 7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
    slices = component_slices(model, ["0", "3", "8"])
    masks = keep_masks(3, 0, 6, 6 + 7 + 5, 0.3)
    got = masked_outputs(model, x, slices, masks)
    for i, mask in enumerate(masks):
        with torch.no_grad():
            want = _zeroed(model, slices, mask)(x)
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)


def test_masks_regenerate_from_seed_and_index():
    a = keep_masks(7, 0, 10, 50, 0.05)
    torch.testing.assert_close(keep_masks(7, 4, 3, 50, 0.05), a[4:7])
    assert not torch.equal(keep_masks(8, 0, 10, 50, 0.05), a)
    assert 0.9 < a.float().mean() < 1.0
    with pytest.raises(InputError, match="alpha"):
        keep_masks(0, 0, 1, 5, 1.0)


def test_estimators_are_exact_when_the_model_is_additive():
    """y = b + w.x exactly: OLS recovers w; the difference of means does for Bernoulli masks up
    to sampling noise."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(12, 3, generator=g), torch.randn(3, generator=g)
    masks = keep_masks(0, 0, 400, 12, 0.3)
    y = masks.double() @ w.double() + b.double()
    s = AblationSums(12, 3)
    s.update(masks[:150], y[:150])
    other = AblationSums(12, 3)
    other.update(masks[150:], y[150:])
    s.merge(other)
    w_ols, b_ols = s.least_squares()
    torch.testing.assert_close(w_ols, w.double(), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(b_ols, b.double(), atol=1e-9, rtol=1e-9)
    w_dm, _ = s.difference_of_means()
    assert (w_dm - w.double()).abs().max() < 0.35 * w.abs().max()
    with pytest.raises(InputError, match="outputs"):
        s.update(masks[:2], y[:3])


def test_margin_is_true_minus_best_other():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    torch.testing.assert_close(margins(logits, torch.tensor([1, 0])), torch.tensor([3.0, -3.0]))


def test_lds_correlation_on_the_digits_cnn(digits, digits_vgg):
    x, y = digits.test.x[:24], digits.test.y[:24]
    paths = [p for p in groups(digits_vgg) if p != "classifier.3"]
    for estimator, prior, n in (
        ("ols", "none", 600),
        ("ridge", "grad", 600),
        ("ridge", "chord", 0),
    ):
        att = estimate(
            digits_vgg,
            x,
            y,
            paths,
            n_masks=n,
            alpha=0.05,
            seed=0,
            estimator=estimator,
            prior=prior,
            prior_points=60,
        )
        corr = lds(digits_vgg, x, y, att, n_masks=120, seed=99)
        assert corr.shape == (24,) and corr.mean() > 0.6, (estimator, corr.mean())


def test_ols_ignores_the_prior_and_ridge_shrinks_towards_it(digits, digits_vgg):
    """OLS on the residual y - x.p plus p is OLS on y whatever p is; a huge ridge returns p."""
    x, y = digits.test.x[:6], digits.test.y[:6]
    paths = ["features.0", "features.3"]
    a = estimate(digits_vgg, x, y, paths, n_masks=300, estimator="ols", prior="none")
    b = estimate(
        digits_vgg, x, y, paths, n_masks=300, estimator="ols", prior="grad", prior_points=1
    )
    torch.testing.assert_close(a.w, b.w, atol=1e-4, rtol=1e-4)
    c = estimate(
        digits_vgg,
        x,
        y,
        paths,
        n_masks=300,
        estimator="ridge",
        prior="grad",
        prior_points=1,
        ridge=1e9,
    )
    prior_only = estimate(
        digits_vgg,
        x,
        y,
        paths,
        n_masks=5,
        estimator="ridge",
        prior="grad",
        prior_points=1,
        ridge=1e9,
        folds=1,
    )
    torch.testing.assert_close(c.w, prior_only.w, atol=1e-5, rtol=1e-4)


def test_cross_validated_error_matches_explicit_refits():
    g = torch.Generator().manual_seed(1)
    masks = keep_masks(0, 0, 60, 8, 0.3)
    y = masks.double() @ torch.randn(8, 2, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        60, 2, generator=g, dtype=torch.float64
    )
    s = AblationSums(8, 2, folds=3)
    s.update(masks, y)
    want = torch.zeros(2, dtype=torch.float64)
    for f in range(3):
        out = torch.arange(60) % 3 == f
        t = AblationSums(8, 2)
        t.update(masks[~out], y[~out])
        w, b = t.least_squares(0.1)
        want += ((y[out] - masks[out].double() @ w - b) ** 2).sum(0)
    torch.testing.assert_close(s.heldout_error(0.1), want / 60)
    w, b, chosen = s.cross_validated()
    assert chosen.shape == (2,)
    with pytest.raises(InputError, match="folds"):
        AblationSums(8, 2, gram=False, folds=3)


def test_keep_gradient_at_ones_is_gradient_times_parameter():
    model, x, y = _cnn(), torch.randn(4, 3, 7, 7), torch.tensor([0, 3, 1, 2])
    slices = component_slices(model, ["0", "3", "8"])
    got = keep_gradients(model, x, y, slices, torch.ones(4, 18))
    for i in range(4):
        model.zero_grad()
        margins(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        want = torch.cat(
            [
                (model.get_submodule(p).weight.grad * model.get_submodule(p).weight)
                .flatten(1)
                .sum(1)
                for p, _, _ in slices
            ]
        )
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-4)


def test_chords_are_exact_where_the_margin_is_linear_in_the_keeps():
    """Two classes and no nonlinearity after the ablated layer: every chord is the single
    ablation's effect, whatever the background."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 9), nn.Linear(9, 2)).eval()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    loo = leave_one_out(model, x, y, ["0"])
    chord = estimate(model, x, y, ["0"], n_masks=0, prior="chord", prior_points=12, alpha=0.1)
    torch.testing.assert_close(chord.w, loo.w, atol=1e-5, rtol=1e-4)
    assert chord.info["forward_equivalents_per_example"] == 36
    with pytest.raises(InputError, match="prior"):
        estimate(model, x, y, ["0"], n_masks=0, prior="none")


def test_leave_one_out_is_single_ablations():
    model, x, y = _cnn(), torch.randn(3, 3, 7, 7), torch.tensor([0, 3, 1])
    att = leave_one_out(model, x, y, ["0", "3"])
    full = margins(model(x), y)
    for c in (0, 5, 6, 12):
        mask = torch.ones(13, dtype=torch.bool)
        mask[c] = False
        with torch.no_grad():
            ablated = margins(_zeroed(model, att.slices, mask)(x), y)
        torch.testing.assert_close(att.w[c], full - ablated, atol=1e-5, rtol=1e-5)
    assert gradient_times_parameter(model, x, y, ["0", "3"]).w.shape == (13, 3)


def test_estimation_resumes_from_saved_sums(tmp_path):
    model, x, y = _cnn(), torch.randn(4, 3, 7, 7), torch.tensor([0, 3, 1, 2])
    path = tmp_path / "sums.safetensors"
    straight = estimate(model, x, y, ["0", "3"], n_masks=300, estimator="ols", block=64)
    estimate(model, x, y, ["0", "3"], n_masks=130, estimator="ols", block=64, resume=path)
    resumed = estimate(model, x, y, ["0", "3"], n_masks=300, estimator="ols", block=64, resume=path)
    assert resumed.info["masks"] == 300
    torch.testing.assert_close(resumed.w, straight.w, atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="another design"):
        estimate(model, x, y, ["0", "3"], n_masks=300, alpha=0.1, estimator="ols", resume=path)


def test_coar_scorer_prunes_like_any_scorer(digits, digits_vgg):
    model = copy.deepcopy(digits_vgg)
    scores = pe.score(model, "coar", data=digits.train.subset(64), masks=120, examples=32)
    assert set(scores) == {p for p in groups(model) if p != "classifier.3"}
    pe.edit(model, "prune", scores, example_inputs=digits.test.x[:1], ratio=0.25)
    assert model(digits.test.x[:2]).shape == (2, 10)


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=20,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 50, (5, 7))
    attn = torch.ones(5, 7, dtype=torch.long)
    attn[1, 4:] = 0  # padded rows: the head mask must not disturb masking
    attn[3, 2:] = 0
    return model, {"input_ids": ids, "attention_mask": attn}


def _heads_zeroed(model, slices, mask):
    """A copy with each ablated head's value rows and value bias zeroed, linear rows' weights
    zeroed: the weight-level ablation the head mask stands for."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p, s, w in slices:
            module = m.get_submodule(p)
            if p.endswith("attention.self"):
                d = module.attention_head_size
                for h in (~mask[s : s + w]).nonzero().flatten().tolist():
                    module.value.weight[h * d : (h + 1) * d] = 0
                    module.value.bias[h * d : (h + 1) * d] = 0
            else:
                module.weight[~mask[s : s + w]] = 0
    return m


def test_head_masks_equal_zeroing_value_slices_on_a_bert_classifier():
    model, x = _tiny_bert()
    paths = [
        "bert.encoder.layer.0.attention.self",
        "bert.encoder.layer.1.attention.self",
        "bert.encoder.layer.1.intermediate.dense",
    ]
    slices = component_slices(model, paths)
    assert [w for _, _, w in slices] == [4, 4, 24]
    masks = keep_masks(5, 0, 6, 32, 0.3)
    got = masked_outputs(model, x, slices, masks)
    for i, mask in enumerate(masks):
        with torch.no_grad():
            want = _heads_zeroed(model, slices, mask)(**x).logits
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
    y = torch.tensor([0, 2, 1, 1, 0])
    loo = leave_one_out(model, x, y, paths[:2])
    one = torch.ones(8, dtype=torch.bool)
    one[5] = False  # layer 1, head 1
    with torch.no_grad():
        ablated = margins(_heads_zeroed(model, loo.slices, one)(**x).logits, y)
        full = margins(model(**x).logits, y)
    torch.testing.assert_close(loo.w[5], full - ablated, atol=1e-5, rtol=1e-5)


def test_head_attributions_from_dict_batches_through_the_scorer():
    model, x = _tiny_bert()
    y = torch.tensor([0, 2, 1, 1, 0])
    paths = ["bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self"]
    att = estimate(model, x, y, paths, n_masks=200, alpha=0.1, prior="chord", prior_points=8)
    assert att.w.shape == (8, 5) and torch.isfinite(att.w).all()
    assert lds(model, x, y, att, n_masks=100, alpha=0.1).mean() > 0.6
    scores = pe.score(
        model, "coar", data=(x, y), targets=paths, masks=40, examples=5, prior_points=4
    )
    assert {p: scores[p].shape for p in scores} == {p: (4,) for p in paths}
    with pytest.raises(InputError, match="attention heads"):
        component_slices(model, ["bert.embeddings.LayerNorm"])


def test_prune_removes_the_lowest_scored_heads_and_cnn_options_to_a_transformer_are_errors(
    tmp_path,
):
    """Head scores given to prune remove each block's lowest-scored whole heads (recorded, saved,
    reloaded); options a path cannot honour are errors naming them, the model untouched."""
    model, batch = _tiny_bert()
    data = (batch, torch.tensor([0, 1, 2, 0, 1]))
    paths = ["bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self"]
    heads = pe.score(model, "coar", data=data, targets=paths, masks=40, examples=5, prior_points=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        pe.core.errors.InputError, match=r"option\(s\) \['scorer'\] of modhifi-p apply to CNNs"
    ):
        pe.edit(model, "modhifi-p", data=data, scorer="l1")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    rec = pe.edit(model, "prune", heads, example_inputs=batch, ratio=0.25)
    for p in paths:
        att = model.get_submodule(p)
        gone = int(heads[p].argmin())
        assert att.num_attention_heads == 3 and rec.changes[p] == [gone]
        keep = [r for r in range(20) if r // 5 != gone]  # 4 heads of 5
        assert torch.equal(att.query.weight, before[f"{p}.query.weight"][keep])
    pe.save(model, tmp_path / "m")
    back = pe.load(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)
