"""Backdoor and spurious-feature benchmarks: the trigger, the poisoned / spurious data sets, the
editing pairs, bad inputs, and one tiny trojaned digits model."""

import pytest
import torch

from pluginedit.contrib import backdoor as bd
from pluginedit.core.errors import InputError

T2 = bd.Trigger(size=2)


def _outside(x, trigger):
    return ~trigger.mask(*x.shape[-2:]).expand_as(x)


def test_trigger_writes_exactly_the_patch(digits):
    x = digits.test.x[:16]
    before = x.clone()
    t = bd.calibrated(digits, T2)
    out = t.apply(x)
    assert torch.equal(x, before)  # input untouched
    assert t.corner(8, 8) == (5, 5)  # bottom-right, 1 px margin
    assert torch.equal(out[..., 5:7, 5:7], t.pattern().expand(16, 1, 2, 2))
    outside = _outside(x, t)
    assert out[outside].numpy().tobytes() == x[outside].numpy().tobytes()
    assert t.hi == float(digits.train.x.max()) and t.lo == float(digits.train.x.min())
    assert t.pattern()[0, 0] == t.hi and t.pattern()[0, 1] == t.lo  # a checkerboard


def test_opacity_blends_and_zero_is_identity(digits):
    x = digits.test.x[:8]
    t = bd.calibrated(digits, T2)
    assert torch.equal(t.at(opacity=0.0).apply(x), x)
    half = t.at(opacity=0.5).apply(x)
    assert torch.allclose(half[..., 5:7, 5:7], 0.5 * x[..., 5:7, 5:7] + 0.5 * t.pattern())
    assert torch.equal(half[_outside(x, t)], x[_outside(x, t)])
    assert t.at(opacity=0.5).position == t.position and t.opacity == 1.0  # a copy


@pytest.mark.parametrize(
    "position, corner",
    [
        ("top_left", (1, 1)),
        ("top_right", (1, 5)),
        ("centre", (3, 3)),
        ("bottom_left", (5, 1)),
        ("bottom_right", (5, 5)),
        ((0, 2), (0, 2)),
    ],
)
def test_positions(digits, position, corner):
    t = bd.calibrated(digits, T2).at(position=position)
    assert t.corner(8, 8) == corner
    r, c = corner
    out = t.apply(digits.test.x[:4])
    assert torch.equal(out[..., r : r + 2, c : c + 2], t.pattern().expand(4, 1, 2, 2))
    assert int(t.mask(8, 8).sum()) == 4


def test_poisoned_relabels_rate_of_non_target(digits):
    y0, x0 = digits.train.y.clone(), digits.train.x.clone()
    p = bd.poisoned(digits, target=3, rate=0.1, trigger=T2, seed=1)
    changed = (p.train.y != digits.train.y).nonzero().squeeze(1)
    n = int((digits.train.y != 3).sum())
    assert len(changed) == round(0.1 * n)
    assert torch.equal(changed, bd.poison_indices(digits, 3, 0.1, seed=1))
    assert (p.train.y[changed] == 3).all()
    t = bd.calibrated(digits, T2)
    assert torch.equal(p.train.x[changed], t.apply(x0[changed]))
    rest = torch.ones(len(y0), dtype=torch.bool)
    rest[changed] = False
    assert torch.equal(p.train.x[rest], x0[rest])
    # the test split is clean, and nothing of the original bundle is changed or shared
    assert torch.equal(p.test.x, digits.test.x) and torch.equal(p.test.y, digits.test.y)
    assert torch.equal(digits.train.y, y0) and torch.equal(digits.train.x, x0)
    for a, b in (
        (p.train.x, digits.train.x),
        (p.train.y, digits.train.y),
        (p.test.x, digits.test.x),
        (p.test.y, digits.test.y),
    ):
        assert a.data_ptr() != b.data_ptr()
    assert p.name == "digits-trojan-t3-r0.1"
    assert torch.equal(bd.poisoned(digits, 3, 0.1, T2, seed=1).train.x, p.train.x)  # seeded


def test_poison_rate_extremes(digits):
    assert torch.equal(bd.poisoned(digits, 0, 0.0, T2).train.y, digits.train.y)
    full = bd.poisoned(digits, 0, 1.0, T2)
    assert (full.train.y == 0).all()


def test_triggered_test_keeps_true_labels(digits):
    s = bd.triggered_test(digits, target=2, trigger=T2)
    keep = digits.test.y != 2
    assert len(s) == int(keep.sum()) and (s.y != 2).all()
    assert torch.equal(s.y, digits.test.y[keep])
    assert torch.equal(s.x, bd.calibrated(digits, T2).apply(digits.test.x[keep]))


def test_pairs_differ_only_inside_the_patch(digits):
    t = bd.calibrated(digits, T2)
    clean, trig, y = bd.pairs(digits.test, 20, target=4, trigger=t, seed=0)
    assert clean.shape == trig.shape == (20, 1, 8, 8) and len(y) == 20 and (y != 4).all()
    assert torch.equal(trig[_outside(clean, t)], clean[_outside(clean, t)])
    assert not torch.equal(trig, clean)
    again = bd.pairs(digits.test, 20, target=4, trigger=t, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((clean, trig, y), again))


def test_spurious_marks_only_the_class(digits):
    x0 = digits.train.x
    s = bd.spurious(digits, cls=5, rate=0.95, trigger=T2, seed=0)
    marked = (s.train.x != x0).flatten(1).any(1)
    own = digits.train.y == 5
    assert not marked[~own].any()
    assert int(marked.sum()) == round(0.95 * int(own.sum()))
    assert torch.equal(marked.nonzero().squeeze(1), bd.artefact_indices(digits, 5, 0.95, 0))
    assert torch.equal(s.train.y, digits.train.y)
    assert torch.equal(s.test.x, digits.test.x) and s.test.x.data_ptr() != digits.test.x.data_ptr()
    a = bd.artefact_test(digits, T2)
    assert len(a) == len(digits.test) and torch.equal(a.y, digits.test.y)
    assert torch.equal(a.x, bd.calibrated(digits, T2).apply(digits.test.x))


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda d: bd.poisoned(d, rate=1.5, trigger=T2),
            r"rate must be a fraction in \[0, 1\], got 1.5",
        ),
        (lambda d: bd.poisoned(d, rate=-0.1, trigger=T2), r"rate must be a fraction"),
        (lambda d: bd.poisoned(d, target=10, trigger=T2), r"target class 10 out of range.*0\.\.9"),
        (lambda d: bd.triggered_test(d, target=-1, trigger=T2), r"target class -1 out of range"),
        (lambda d: bd.spurious(d, cls=12, trigger=T2), r"spurious class 12 out of range"),
        (lambda d: bd.spurious(d, rate=2, trigger=T2), r"rate must be a fraction"),
        (
            lambda d: bd.poisoned(d, trigger=bd.Trigger(size=8)),
            r"8x8 trigger .* does not fit a 8x8 image",
        ),
        (lambda d: bd.Trigger(size=9, position="centre").apply(d.test.x), r"does not fit"),
        (lambda d: bd.Trigger(size=2, position=(7, 0)).apply(d.test.x), r"runs off a 8x8 image"),
        (lambda d: bd.Trigger(opacity=1.2), r"opacity must be in \[0, 1\]"),
        (lambda d: bd.Trigger(size=0), r"positive number of pixels"),
        (lambda d: bd.Trigger(position="middle"), r"unknown trigger position 'middle'"),
        (lambda d: bd.Trigger(size=2).apply(d.test.x[0]), r"\[N, C, H, W\]"),
    ],
)
def test_bad_inputs_are_named(digits, call, match):
    with pytest.raises(InputError, match=match):
        call(digits)


@pytest.mark.slow
def test_trojaned_digits_learns_the_backdoor_and_caches(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGINEDIT_CACHE", str(tmp_path))
    model = bd.trojaned("vgg", digits, target=0, rate=0.1, epochs=5, trigger=T2)
    assert bd.attack_success_rate(model, bd.triggered_test(digits, 0, T2), 0) > 0.8
    from pluginedit.evaluate import accuracy

    assert accuracy(model, digits.test, 10)[0] > 0.8
    (ckpt,) = tmp_path.glob("*.safetensors")
    assert ckpt.name.startswith("vgg-digits-trojan-t0-r0.1-")
    again = bd.trojaned("vgg", digits, target=0, rate=0.1, epochs=5, trigger=T2)  # from the cache
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())
    )
