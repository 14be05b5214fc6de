import copy
import warnings

import pytest
import torch
from torch import nn

from pluginedit import api
from pluginedit.core.errors import InputError
from pluginedit.editors.common.bnrecal import recalibrate_bn
from pluginedit.linalg import IllConditionedWarning
from pluginedit.scorers.fidelity import collect_grams, pair_scores


@pytest.fixture(scope="module")
def split(fmnist):
    return fmnist.train.subset(1024, seed=1), fmnist.test.subset(2000, seed=1)


def _acc(model, test, classes=None):
    with torch.no_grad():
        pred = model.eval()(test.x).argmax(1)
    sel = (
        torch.ones_like(test.y, dtype=torch.bool)
        if classes is None
        else torch.isin(test.y, classes)
    )
    return float((pred[sel] == test.y[sel]).float().mean())


def _modhifi(model, calib, **kw):
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)  # dead ReLU channels are normal
        rec = api.edit(
            m, "modhifi-p", None, data=calib, ratio=0.5, steps=1, calib_samples=1024, **kw
        )
    return m, rec


def test_pair_scores_match_materialised_contributions(fmnist_vgg, split, monkeypatch):
    """R_ci = E<Y_c, A_ci>, s_ci and alpha_ci from the Gram equal the brute-force values.
    The fp64 reference Gram: this checks the formulas, the kernels are checked elsewhere."""
    monkeypatch.setenv("PLUGINEDIT_BACKEND", "torch")
    calib, _ = split
    conv = fmnist_vgg.features[7]
    grams = collect_grams(fmnist_vgg, (calib.x[:64], calib.y[:64]), {"features.7"})
    store = {}
    h = conv.register_forward_hook(lambda m, i, o: store.update(x=i[0].double()))
    with torch.no_grad():
        fmnist_vgg(calib.x[:64])
    h.remove()
    x, w = store["x"], conv.weight.double()
    a = torch.stack(
        [
            nn.functional.conv2d(x, w[c][:, None], padding=1, groups=w.shape[1])
            for c in range(w.shape[0])
        ],
        1,
    )  # A [N, c_out, c_in, H, W]
    a = a.permute(1, 2, 0, 3, 4).flatten(2)  # [c_out, c_in, rows]
    y = a.sum(1, keepdim=True)
    r, e_a, e_y = (y * a).mean(2), a.square().mean(2), y.square().mean(2)
    tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        pair_scores(conv.weight, grams["features.7"], "uncentred"), r / e_y, **tol
    )
    torch.testing.assert_close(
        pair_scores(conv.weight, grams["features.7"], "fidelity"), r.square() / (e_a * e_y), **tol
    )
    torch.testing.assert_close(
        pair_scores(conv.weight, grams["features.7"], "alpha"), r / e_a, **tol
    )
    ac = a - a.mean(2, keepdim=True)
    yc = ac.sum(1, keepdim=True)
    torch.testing.assert_close(
        pair_scores(conv.weight, grams["features.7"], "centred"),
        (yc * ac).mean(2) / yc.square().mean(2),
        **tol,
    )


def test_fidelity_scorer_is_registered_and_scores_every_channel(fmnist_vgg, split):
    s = api.score(fmnist_vgg, "fidelity", data=split[0].subset(256))
    assert set(s) == {
        "features.0",
        "features.3",
        "features.7",
        "features.10",
        "features.14",
        "features.17",
        "classifier.1",
    }
    assert all(torch.isfinite(v).all() and v.std() > 0 for v in s.values())


def test_modhifi_p_at_half_the_channels_beats_l1_and_each_part_helps(fmnist_vgg, split):
    calib, test = split
    l1 = copy.deepcopy(fmnist_vgg)
    api.prune(l1, "l1", ratio=0.5, data=calib)
    acc = {}
    for comp, rec in [(False, False), (True, False), (False, True), (True, True)]:
        m, record = _modhifi(fmnist_vgg, calib, compensate=comp, recalibrate=rec)
        acc[comp, rec] = _acc(m, test)
    assert record.info["params_after"] < 0.4 * record.info["params_before"]
    assert acc[True, True] >= _acc(l1, test) + 0.05, (acc, _acc(l1, test))
    assert acc[True, False] > acc[False, False] and acc[False, True] > acc[False, False], acc
    assert acc[True, True] >= max(acc[True, False], acc[False, True]) - 0.01, acc


def test_modhifi_p_reaches_a_parameter_target(fmnist_resnet, split):
    m, record = _modhifi(fmnist_resnet, split[0], target="params", amount=0.3, per_step=0.15)
    assert 1 - record.info["params_after"] / record.info["params_before"] >= 0.3
    assert _acc(m, split[1]) > 0.5


def test_modhifi_p_bad_input_leaves_model_untouched(fmnist_vgg, split):
    m = copy.deepcopy(fmnist_vgg)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(InputError, match="ratio"):
        api.edit(m, "modhifi-p", None, data=split[0], ratio=1.5)
    with pytest.raises(InputError, match="calibration data"):
        api.edit(m, "modhifi-p", None, ratio=0.5)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_bn_recalibration_matches_the_data_statistics():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)).eval()
    x = torch.randn(256, 1, 8, 8) * 2 + 1
    recalibrate_bn(model, (x, torch.zeros(256, dtype=torch.long)), batch_size=64)  # equal batches
    with torch.no_grad():
        z = model[0](x)
    torch.testing.assert_close(model[1].running_mean, z.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, z.var((0, 2, 3)), rtol=2e-2, atol=1e-4)
    assert not model.training and model[1].momentum == 0.1


def test_modhifi_u_forgets_a_class_from_its_samples_only(fmnist_vgg, fmnist):
    calib, test = fmnist.train.subset(4000, seed=2), fmnist.test.subset(3000, seed=2)
    # two classes here (the benchmark averages all ten on the fully trained models)
    dense = {
        k: _acc(fmnist_vgg, test, torch.tensor([j for j in range(10) if j != k])) for k in (1, 8)
    }
    retained = {}
    for k in (1, 8):
        poisoned = copy.deepcopy(calib)
        poisoned.x[poisoned.y != k] = float("nan")  # retained-class samples must not be read
        m = copy.deepcopy(fmnist_vgg)
        record = api.forget(m, k, poisoned, editor="modhifi-u", num_classes=10)
        assert _acc(m, test, torch.tensor([k])) <= 0.02
        retained[k] = _acc(m, test, torch.tensor([j for j in range(10) if j != k]))
        assert record.info["slices_edited"] > 0
        record.undo(m)
        assert all(
            torch.equal(a, b)
            for a, b in zip(m.state_dict().values(), fmnist_vgg.state_dict().values())
        )
    # the acceptance is on the class average: retained accuracy within 3 points of dense
    assert sum(retained.values()) / 2 >= sum(dense.values()) / 2 - 0.03


def test_modhifi_u_negates_hifi_slices_without_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(90, 6), torch.arange(90) % 3
    before = model[3].weight.detach().clone()
    record = api.forget(
        model, 1, (x, y), editor="modhifi-u", num_classes=3, fraction=0.2, layers=["3"], rows="all"
    )
    assert record.options["mode"] == "auto" and record.info["mode"] == "negate"
    flat = record.changes["3"]
    edited = torch.zeros(before.numel(), dtype=torch.bool)
    edited[flat] = True
    edited = edited.view_as(before)
    assert len(flat) == 4
    torch.testing.assert_close(model[3].weight[edited], -before[edited])
    torch.testing.assert_close(model[3].weight[~edited], before[~edited])


def test_modhifi_u_held_out_check_fits_grams_on_half_the_samples(fmnist_vgg, fmnist):
    calib = fmnist.train.subset(3000, seed=2)
    m = copy.deepcopy(fmnist_vgg)
    record = api.forget(m, 1, calib, editor="modhifi-u", num_classes=10, check="held-out")
    assert record.info["forget_samples"] == 128  # Grams from half of the 256 samples read
    test = fmnist.test.subset(2000, seed=2)
    assert _acc(m, test, torch.tensor([1])) <= 0.05


def test_modhifi_u_head_only_and_its_fraction_cap():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    ).eval()
    x, y = torch.randn(90, 6), torch.arange(90) % 3
    rec = api.forget(
        model, 1, (x, y), editor="modhifi-u", num_classes=3, hidden=False, max_fraction=0.25
    )
    assert set(rec.changes) == {"4"} and rec.info["fraction"] <= 0.25
    rec.undo(model)
    both = api.forget(
        model, 1, (x, y), editor="modhifi-u", num_classes=3, fraction=0.1, hidden=True
    )
    assert set(both.changes) == {"0", "2", "4"}
    with pytest.raises(InputError, match="max_fraction"):
        api.forget(model, 1, (x, y), editor="modhifi-u", num_classes=3, max_fraction=1.5)


def test_modhifi_u_forget_row_only_lowers_the_forget_logit():
    """rows='forget': only the head's row k changes, only slices that push logit k up are edited
    (negated here: no BN), so with ReLU features logit k can only fall and no prediction other
    than k changes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x, y = torch.randn(300, 6), torch.arange(300) % 3
    with torch.no_grad():
        before_w, before = model[2].weight.clone(), model(x)
    rec = api.forget(
        model,
        1,
        (x, y),
        editor="modhifi-u",
        num_classes=3,
        hidden=False,
        rows="forget",
        max_fraction=1.0,
        target=0.0,
    )
    w = model[2].weight.detach()
    changed = (w != before_w).nonzero()
    assert len(changed) and set(changed[:, 0].tolist()) == {1} and set(rec.changes) == {"2"}
    assert (before_w[changed[:, 0], changed[:, 1]] > 0).all() and (
        w[changed[:, 0], changed[:, 1]] < 0
    ).all()
    with torch.no_grad():
        after = model(x)
    assert (after[:, 1] <= before[:, 1] + 1e-6).all()
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
    kept = before.argmax(1) != 1
    assert torch.equal(after.argmax(1)[kept], before.argmax(1)[kept])
    assert (after.argmax(1)[y == 1] == 1).float().mean() < (
        before.argmax(1)[y == 1] == 1
    ).float().mean()
    with pytest.raises(InputError, match="rows"):
        api.forget(model, 1, (x, y), editor="modhifi-u", num_classes=3, rows="some")


def test_modhifi_u_forget_row_on_fmnist_keeps_retained_accuracy(fmnist_vgg, fmnist):
    """The default (the head's forget row) on a real model: forgotten on test, retained not worse;
    classes 0 and 6 are where the paper's edit of every row cost the most."""
    calib, test = fmnist.train.subset(4000, seed=2), fmnist.test.subset(3000, seed=2)
    for k in (0, 6):
        rest = torch.tensor([j for j in range(10) if j != k])
        m = copy.deepcopy(fmnist_vgg)
        rec = api.forget(m, k, calib, editor="modhifi-u", num_classes=10)
        assert rec.info["mode"] == "negate" and len(rec.changes) == 1
        assert _acc(m, test, torch.tensor([k])) <= 0.03
        assert _acc(m, test, rest) >= _acc(fmnist_vgg, test, rest) - 0.002


def test_modhifi_u_auto_mode_negates_the_forget_row_and_zeroes_elsewhere_in_bn_nets():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).eval()
    x, y = torch.randn(90, 1, 6, 6), torch.arange(90) % 3
    with torch.no_grad():
        model[6].weight[2].abs_()  # class 2's logit is pushed up by the ReLU features
    hidden_w, head_w = model[4].weight.detach().clone(), model[6].weight.detach().clone()
    rec = api.forget(model, 2, (x, y), editor="modhifi-u", num_classes=3, hidden=True, fraction=0.5)
    assert rec.info["mode"] == "negate/zero" and set(rec.changes) == {"4", "6"}
    hidden_changed = model[4].weight != hidden_w
    assert hidden_changed.any() and (model[4].weight[hidden_changed] == 0).all()
    head_changed = model[6].weight != head_w
    assert head_changed[2].any() and not head_changed[:2].any()
    torch.testing.assert_close(model[6].weight[head_changed], -head_w[head_changed])


def test_modhifi_u_that_falls_short_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x, y = torch.randn(300, 6), torch.arange(300) % 3
    with pytest.warns(UserWarning, match="class 1 still at"):
        rec = api.forget(model, 1, (x, y), editor="modhifi-u", num_classes=3, max_fraction=0.02)
    with torch.no_grad():
        left = float((model(x[y == 1]).argmax(1) == 1).float().mean())
    assert rec.info["forgotten_accuracy"] == pytest.approx(left, abs=1e-6) and left > 0.01
