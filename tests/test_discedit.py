"""DisCEdit editors on the small Fashion-MNIST CNNs: forgetting, pruning, masking == removal."""
import copy

import pytest
import torch

from pluginedit import api, report
from pluginedit.editors.discedit import DisCEditSP
from pluginedit.errors import InputError


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_forgetting_drops_one_class_and_keeps_the_rest(arch, fmnist, fmnist_vgg, fmnist_resnet):
    model = {"vgg": fmnist_vgg, "resnet": fmnist_resnet}[arch]
    test = fmnist.test.subset(3000)
    _, dense = report.accuracy(model, test, 10)
    for k in ({"vgg": 7, "resnet": 0}[arch],):
        edited = copy.deepcopy(model)
        rec = api.forget(edited, k, fmnist.train.subset(1500, seed=1), num_classes=10, max_samples=1500)
        _, pc = report.accuracy(edited, test, 10)
        f = report.forgetting(pc, k)
        kept = (sum(dense) - dense[k]) / 9
        assert f["forgotten_accuracy"] <= 0.05, (arch, k, f)
        assert f["retained_accuracy"] >= kept - 0.03, (arch, k, f, kept)
        rec.undo(edited)   # masking is reversible
        assert report.accuracy(edited, test, 10)[1] == dense


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
    assert all(torch.equal(before[k], v) for k, v in edited.state_dict().items())   # untouched
    with pytest.raises(InputError, match="unknown options"):
        api.forget(edited, 3, data, num_classes=10, mm=3)


def test_pruning_mask_equals_removal_and_beats_random(fmnist, fmnist_vgg):
    stats, test = fmnist.train.subset(1500, seed=2), fmnist.test.subset(2000)
    example = test.x[:8]
    masked, removed = copy.deepcopy(fmnist_vgg), copy.deepcopy(fmnist_vgg)
    opts = dict(data=stats, num_classes=10, ratio=0.4, max_samples=1500)
    api.edit(masked, "discedit-sp", physical=False, **opts)
    rec = api.edit(removed, "discedit-sp", example_inputs=example, **opts)
    assert 0.2 < rec.info["fraction_removed"] < 0.8
    with torch.no_grad():
        assert torch.allclose(masked.eval()(example), removed.eval()(example), atol=1e-4)
    acc = report.accuracy(removed, test, 10)[0]
    rand = copy.deepcopy(fmnist_vgg)
    api.edit(rand, "prune", api.score(rand, "random", example_inputs=example), ratio=0.4,
             example_inputs=example, ignored=[])
    assert acc > report.accuracy(rand, test, 10)[0]


def test_threshold_loop_respects_floor_and_stops(fmnist, fmnist_vgg, fmnist_resnet):
    stats, held = fmnist.train.subset(800, seed=3), fmnist.test.subset(800)
    model = copy.deepcopy(fmnist_vgg)
    dense = report.accuracy(model, held, 10)[0]
    rec = api.edit(model, DisCEditSP(), data=stats, num_classes=10, allocation="threshold", rho=0.3,
                   rho_step=0.1, acc_floor=dense - 0.1, eval_data=held, max_iter=3, max_samples=800)
    rounds = rec.info["rounds"]
    assert 1 <= len(rounds) <= 3
    acc = report.accuracy(model, held, 10)[0]
    assert acc >= dense - 0.1
    accepted = [r for r in rounds if r["accuracy"] >= dense - 0.1]
    assert (rec.info["fraction_removed"] > 0) == bool(accepted)
    model = copy.deepcopy(fmnist_resnet)
    rec = api.edit(model, "discedit-sp", data=stats, num_classes=10, ratio=0.2, max_samples=800,
                   example_inputs=held.x[:2])
    # residual-coupled layers are left alone, so masking and removal agree
    assert all("conv2" not in p and "downsample" not in p for p in rec.info["layers"])
    with pytest.raises(InputError, match="eval_data"):
        api.edit(copy.deepcopy(fmnist_resnet), "discedit-sp", data=stats, num_classes=10,
                 allocation="threshold", acc_floor=0.5)
