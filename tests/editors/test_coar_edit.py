"""COAR-Edit: the Welch t-score, fixing a misclassified digit, forgetting a digit class, the
guard and the failure path (model untouched), and both tasks from the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import pluginedit as pe
from pluginedit import cli
from pluginedit.capture import Split
from pluginedit.core.errors import InputError
from pluginedit.editors.coar_edit import welch_t
from pluginedit.evaluate import accuracy, predictions

FAST = {"masks": 0, "prior_points": 40}  # the chord prior alone: seconds on the digits CNN


def test_welch_t_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    t, r = torch.randn(4, 5, generator=g), torch.randn(4, 9, generator=g)
    for c in range(4):
        want = (t[c].mean() - r[c].mean()) / (
            t[c].var(correction=0) / 5 + r[c].var(correction=0) / 9
        ).sqrt()
        torch.testing.assert_close(welch_t(t, r)[c], want)
    single = welch_t(t[:, :1], r)  # one target: its variance term is 0, not NaN
    assert torch.isfinite(single).all()


def _misclassified_pool(digits, model):
    wrong = (predictions(model, digits.test.x) != digits.test.y).nonzero().squeeze(1)
    assert len(wrong), "the digits CNN classifies every test image correctly"
    i = int(wrong[0])
    train = digits.train.subset(600, seed=0)
    pool = Split(
        torch.cat([train.x, digits.test.x[i : i + 1]]),
        torch.cat([train.y, digits.test.y[i : i + 1]]),
    )
    return i, pool, len(train.y)


def test_coar_edit_fixes_a_misclassified_digit(digits, digits_vgg):
    model = copy.deepcopy(digits_vgg)
    i, pool, target = _misclassified_pool(digits, model)
    before = accuracy(model, digits.test, 10)[0]
    rec = pe.edit(model, "coar-edit", data=pool, target=[target], **FAST)
    assert int(predictions(model, digits.test.x[i : i + 1])[0]) == int(digits.test.y[i])
    assert 1 <= rec.info["ablated"] <= 50
    assert accuracy(model, digits.test, 10)[0] >= before - 0.02
    # ablation = the weight slices zeroed, bias and BN untouched; undo restores exactly
    for path, idx in rec.changes.items():
        layer = model.get_submodule(path)
        assert layer.weight[idx].abs().sum() == 0
        if layer.bias is not None:
            torch.testing.assert_close(layer.bias, digits_vgg.get_submodule(path).bias)
    rec.undo(model)
    for a, b in zip(model.state_dict().values(), digits_vgg.state_dict().values()):
        assert torch.equal(a, b)


def test_coar_edit_failure_leaves_the_model_untouched(digits, digits_vgg):
    model = copy.deepcopy(digits_vgg)
    i, pool, target = _misclassified_pool(digits, model)
    wrong = (predictions(model, digits.test.x) != digits.test.y).nonzero().squeeze(1)
    assert len(wrong) >= 3
    many = Split(
        torch.cat([pool.x, digits.test.x[wrong]]), torch.cat([pool.y, digits.test.y[wrong]])
    )
    targets = list(range(len(pool.y), len(many.y)))  # one ablation cannot fix them all
    with pytest.raises(InputError, match="budget=1"):
        pe.edit(model, "coar-edit", data=many, target=targets, budget=1, max_drop=0.0, **FAST)
    for a, b in zip(model.state_dict().values(), digits_vgg.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="already correctly classified"):
        pe.edit(model, "coar-edit", data=pool, target=[0], **FAST)
    with pytest.raises(InputError, match="target indices"):
        pe.edit(model, "coar-edit", data=pool, target=[len(pool.y)], **FAST)


def test_coar_forget_forgets_a_digit_and_keeps_the_rest(digits, digits_vgg):
    model = copy.deepcopy(digits_vgg)
    _, per0 = accuracy(model, digits.test, 10)
    rec = pe.forget(model, 3, digits.train.subset(1000, seed=0), editor="coar-forget", **FAST)
    _, per = accuracy(model, digits.test, 10)
    assert per0[3] - per[3] >= 0.8
    rest0 = sum(p for k, p in enumerate(per0) if k != 3) / 9
    rest = sum(p for k, p in enumerate(per) if k != 3) / 9
    assert rest >= rest0 - 0.03
    assert rec.info["ablated"] == rec.num_changed()


@pytest.mark.slow
def test_fix_and_forget_from_the_cli(tmp_path, capsys):
    out = tmp_path / "fix.json"
    opts = ["-o", "masks=0", "-o", "prior_points=40"]
    assert (
        cli.main(
            ["fix", "--example", "auto", "--report", str(out), "--save", str(tmp_path / "m")] + opts
        )
        == 0
    )
    rep = json.loads(out.read_text())
    assert rep["predicted_after"] == rep["label"]
    assert rep["after"]["accuracy"] >= rep["before"]["accuracy"] - 0.02
    reloaded = pe.load(tmp_path / "m")
    from pluginedit.contrib import data

    assert accuracy(reloaded, data.load_digits().test, 10)[0] == pytest.approx(
        rep["after"]["accuracy"], abs=1e-9
    )
    assert (
        cli.main(["forget", "--class", "5", "--editor", "coar-forget", "--report", str(out)] + opts)
        == 0
    )
    rep = json.loads(out.read_text())
    assert rep["after"]["forgotten_accuracy"] <= 0.2
    assert cli.main(["fix", "--editor", "prune"]) == 2
    assert "'prune' is a prune editor" in capsys.readouterr().err
    assert cli.main(["fix", "--example", "100000"]) == 2
