"""COAR: the batched masked forward equals zeroing weight slices, the estimators recover exact
attributions where the model is additive in the masks, LDS is high on a real CNN, and the coar
scorer prunes like any scorer."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pluginedit as pe
from pluginedit.capture.masks import component_slices, keep_masks, margins, masked_outputs
from pluginedit.core.components import groups
from pluginedit.core.errors import InputError
from pluginedit.scorers.coar import estimate, lds
from pluginedit.stats import AblationSums


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 7, 3, padding=1, bias=False), nn.BatchNorm2d(7), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(7, 5), nn.ReLU(),
                         nn.Linear(5, 4)).eval()


def _zeroed(model, slices, mask):
    """A copy with every ablated component's weight slice zeroed (bias and BN untouched)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p, s, w in slices:
            m.get_submodule(p).weight[~mask[s:s + w]] = 0
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
    w, b, slices = estimate(digits_vgg, x, y, paths, n_masks=600, alpha=0.05, seed=0)
    corr = lds(digits_vgg, x, y, slices, w, b, n_masks=120, seed=99)
    assert corr.shape == (24,) and corr.mean() > 0.6


def test_coar_scorer_prunes_like_any_scorer(digits, digits_vgg):
    model = copy.deepcopy(digits_vgg)
    scores = pe.score(model, "coar", data=digits.train.subset(64), masks=120, examples=32)
    assert set(scores) == {p for p in groups(model) if p != "classifier.3"}
    pe.edit(model, "prune", scores, example_inputs=digits.test.x[:1], ratio=0.25)
    assert model(digits.test.x[:2]).shape == (2, 10)
