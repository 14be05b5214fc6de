"""DisCEdit editors on the small Fashion-MNIST CNNs: forgetting, pruning, masking == removal."""

import copy

import pytest
import torch

from pluginedit import api, report
from pluginedit.core.errors import InputError
from pluginedit.core.record import EditRecord
from pluginedit.editors.mask import zero_components


@pytest.fixture(scope="module")
def fm_test(fmnist):
    """2000 test samples (about 200 per class), shared by the accuracy checks below."""
    return fmnist.test.subset(2000)


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_forgetting_drops_one_class_and_keeps_the_rest(
    arch, fmnist, fm_test, fmnist_vgg, fmnist_resnet
):
    model = {"vgg": fmnist_vgg, "resnet": fmnist_resnet}[arch]
    _, dense = report.accuracy(model, fm_test, 10)
    k = {"vgg": 7, "resnet": 0}[arch]
    edited = copy.deepcopy(model)
    rec = api.forget(edited, k, fmnist.train.subset(1000, seed=1), num_classes=10, max_samples=1000)
    _, pc = report.accuracy(edited, fm_test, 10)
    f = report.forgetting(pc, k)
    kept = (sum(dense) - dense[k]) / 9
    assert dense[k] > 0.5, (arch, k, dense[k])  # there was something to forget
    assert f["forgotten_accuracy"] <= 0.05, (arch, k, f)
    assert f["retained_accuracy"] >= kept - 0.03, (arch, k, f, kept)
    assert rec.num_changed() > 0
    rec.undo(edited)  # masking is reversible: every tensor back bit for bit
    want = model.state_dict()
    assert all(torch.equal(want[n], v) for n, v in edited.state_dict().items())


def test_forgetting_top_m_guard_and_bad_input(fmnist, fmnist_vgg):
    data = fmnist.train.subset(600)
    edited = copy.deepcopy(fmnist_vgg)
    # m = 0: nothing selected (the authors' [-0:] slice would have zeroed every filter)
    rec = api.forget(edited, 3, data, num_classes=10, select="top_m", m=0, max_samples=600)
    assert rec.num_changed() == 0 and rec.info["skipped"]
    before = copy.deepcopy(fmnist_vgg.state_dict())
    no_class_3 = data.subset(exclude=[3])
    with pytest.raises(InputError, match=r"\[3\] have no samples"):
        api.forget(edited, 3, no_class_3, num_classes=10, max_samples=600)
    assert all(torch.equal(before[k], v) for k, v in edited.state_dict().items())  # untouched
    with pytest.raises(InputError, match="unknown option"):
        api.forget(edited, 3, data, num_classes=10, mm=3)


def test_pruning_mask_equals_removal_and_beats_random(fmnist, fm_test, fmnist_vgg):
    stats = fmnist.train.subset(1000, seed=2)
    example = fm_test.x[:8]
    removed = copy.deepcopy(fmnist_vgg)
    rec = api.edit(
        removed,
        "discedit-sp",
        example_inputs=example,
        data=stats,
        num_classes=10,
        ratio=0.1,
        max_samples=1000,
        recalibrate=False,  # so the zeroed copy below is the same function
    )
    assert 0.1 < rec.info["fraction_removed"] < 0.3
    # what physical=False leaves: the same channels zeroed (weight, bias, BN affine) in place
    masked = copy.deepcopy(fmnist_vgg)
    zero_components(masked, rec.changes, True, EditRecord("mask"))
    assert sum(p.numel() for p in masked.parameters()) > sum(
        p.numel() for p in removed.parameters()
    )
    with torch.no_grad():
        assert torch.allclose(masked.eval()(example), removed.eval()(example), atol=1e-4)
    acc = report.accuracy(removed, fm_test, 10)[0]
    rand = copy.deepcopy(fmnist_vgg)
    api.edit(
        rand,
        "prune",
        api.score(rand, "random", example_inputs=example),
        ratio=0.1,
        example_inputs=example,
        ignored=[],
    )
    # at 10% of channels per layer (~17% of parameters) and no fine-tuning the witness keeps
    # about 0.5 accuracy where random channels leave about chance (0.13); a margin, not a tie
    assert acc > report.accuracy(rand, fm_test, 10)[0] + 0.15


def test_threshold_loop_respects_floor_and_stops(fmnist, fmnist_vgg, fmnist_resnet):
    stats, held = fmnist.train.subset(500, seed=3), fmnist.test.subset(500)
    model = copy.deepcopy(fmnist_vgg)
    dense = report.accuracy(model, held, 10)[0]
    rec = api.edit(
        model,
        "discedit-sp",
        data=stats,
        num_classes=10,
        allocation="threshold",
        rho=0.3,
        rho_step=0.1,
        acc_floor=dense - 0.1,
        eval_data=held,
        max_iter=2,
        max_samples=500,
    )
    rounds = rec.info["rounds"]
    assert 1 <= len(rounds) <= 2
    acc = report.accuracy(model, held, 10)[0]
    assert acc >= dense - 0.1
    accepted = [r for r in rounds if r["accuracy"] >= dense - 0.1]
    assert (rec.info["fraction_removed"] > 0) == bool(accepted)
    with pytest.raises(InputError, match="eval_data"):
        api.edit(
            copy.deepcopy(fmnist_resnet),
            "discedit-sp",
            data=stats,
            num_classes=10,
            allocation="threshold",
            acc_floor=0.5,
        )


def test_pruning_a_resnet_removes_whole_residual_groups(fmnist, fm_test, fmnist_resnet):
    """The residual stream's channels go too (stem, each block's conv2 and shortcut: one group),
    the pruned model still runs, matches the masked one, and keeps its accuracy on real data."""
    stats, example = fmnist.train.subset(800, seed=4), fm_test.x[:2]
    dense = report.accuracy(fmnist_resnet, fm_test, 10)[0]
    removed = copy.deepcopy(fmnist_resnet)
    opts = dict(data=stats, num_classes=10, ratio=0.2, max_samples=500, example_inputs=example)
    rec = api.edit(removed, "discedit-sp", **opts)
    assert ["layers.2.0.conv2", "layers.2.0.downsample.0"] in rec.info["groups"]
    assert ["stem.0", "layers.0.0.conv2"] in rec.info["groups"]
    # every writer into a stream lost the same channels, so the adds still line up
    widths = {p: m.out_channels for p, m in removed.named_modules() if hasattr(m, "out_channels")}
    assert widths["stem.0"] == widths["layers.0.0.conv2"] == 16 - 3
    assert widths["layers.2.0.conv2"] == widths["layers.2.0.downsample.0"] == 64 - 12
    assert removed.fc.in_features == 64 - 12
    # 20 % of every group's channels: about 1 - 0.8^2 of the parameters, not the ~10 % the
    # uncoupled convs alone held
    assert 0.3 < rec.info["fraction_removed"] < 0.4
    # masking (physical=False) zeroes the same channels of every member and recalibrates BN the
    # same way: the same function
    masked = copy.deepcopy(fmnist_resnet)
    rec_m = api.edit(masked, "discedit-sp", physical=False, **opts)
    assert rec_m.changes["layers.2.0.downsample.0"] == rec_m.changes["layers.2.0.conv2"]
    with torch.no_grad():
        assert torch.allclose(
            masked.eval()(fm_test.x[:64]), removed.eval()(fm_test.x[:64]), atol=1e-4
        )
    acc = report.accuracy(removed, fm_test, 10)[0]
    assert acc > dense - 0.25, (acc, dense)  # no fine-tuning; chance is 0.1
    rec_m.undo(masked)  # masking, BN statistics included, is reversible
    want = fmnist_resnet.state_dict()
    assert all(torch.equal(want[n], v) for n, v in masked.state_dict().items())


def test_forgetting_on_a_resnet_zeroes_the_stream_channel(fmnist, fm_test, fmnist_resnet):
    """discedit-u edits the last stage's residual group whole: the same channels of conv2 and
    the shortcut, so the stream the head reads carries exactly 0 there."""
    k = 0
    data = fmnist.train.subset(1000, seed=1)
    edited = copy.deepcopy(fmnist_resnet)
    rec = api.forget(edited, k, data, num_classes=10, max_samples=1000)
    group = ["layers.2.0.conv2", "layers.2.0.downsample.0"]
    assert group in rec.info["groups"]
    zeroed = rec.changes.get("layers.2.0.conv2")
    assert zeroed and rec.changes["layers.2.0.downsample.0"] == zeroed
    seen = {}

    def read(module, inputs, output):
        seen["x"] = inputs[0]

    edited.fc.register_forward_hook(read)
    with torch.no_grad():
        edited.eval()(fm_test.x[:32])
    assert seen["x"][:, zeroed].abs().max() == 0
    _, dense = report.accuracy(fmnist_resnet, fm_test, 10)
    _, pc = report.accuracy(edited, fm_test, 10)
    f = report.forgetting(pc, k)
    assert f["forgotten_accuracy"] <= 0.05 < dense[k]
    assert f["retained_accuracy"] >= (sum(dense) - dense[k]) / 9 - 0.05


def test_held_out_check_scores_one_half_and_checks_the_other(fmnist, fm_test, fmnist_vgg):
    from pluginedit.editors.discedit_u import halves

    data = fmnist.train.subset(1000, seed=1)
    scored, check = halves(data)
    assert len(scored) == len(check) == 500
    assert torch.equal(scored.x[3], data.x[6]) and torch.equal(check.x[3], data.x[7])
    k = 7
    edited = copy.deepcopy(fmnist_vgg)
    rec = api.forget(edited, k, data, num_classes=10, max_samples=1000, check="held-out")
    _, pc = report.accuracy(edited, fm_test, 10)
    assert report.forgetting(pc, k)["forgotten_accuracy"] <= 0.05 and rec.num_changed() > 0
    with pytest.raises(InputError, match="held-out"):
        halves(torch.utils.data.TensorDataset(data.x, data.y))


def test_adaptive_forgetting_that_falls_short_says_so(fmnist, fmnist_vgg):
    """Capped at 2 channels of the last conv, the class survives: a warning and the accuracy
    reached, not a silent partial edit."""
    data, k = fmnist.train.subset(600, seed=3), 7
    edited = copy.deepcopy(fmnist_vgg)
    with pytest.warns(UserWarning, match="class 7 still at"):
        rec = api.forget(edited, k, data, num_classes=10, max_samples=600, num_layers=1, m=2)
    _, pc = report.accuracy(edited, data, 10)
    assert rec.info["forgotten_accuracy"] > 0.02
    assert rec.info["forgotten_accuracy"] == pytest.approx(pc[k], abs=1e-6)
