import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pluginedit import api
from pluginedit.core.errors import InputError
from pluginedit.editors.common.bnrecal import recalibrate_bn


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class _ResNet(nn.Module):
    def __init__(self, c=16, classes=5):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(_Block(c), _Block(c), _Block(c))
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


def _images(n, gen):
    # smooth images (upsampled noise): correlated channels, as in real data, so a refit can help
    return F.interpolate(torch.randn(n, 3, 4, 4, generator=gen), size=12, mode="bilinear")


@pytest.fixture(scope="module")
def residual():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = _ResNet()
    x = _images(1024, gen)
    recalibrate_bn(model, (x, torch.zeros(len(x), dtype=torch.long)))  # realistic BN statistics
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    held = _images(512, gen)
    return model.eval(), (x, y), held


def _error(model, pruned, held):
    with torch.no_grad():
        ref = model(held)
        return float((pruned(held) - ref).square().mean() / ref.square().mean())


def _prune(model, calib, refit):
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = api.edit(m, "modhifi-p", None, data=calib, ratio=0.5, refit=refit, calib_samples=512)
    return m, rec


def test_sequential_refit_tracks_the_dense_outputs_better_on_held_out_inputs(residual):
    model, calib, held = residual
    one_shot, _ = _prune(model, calib, "dense")
    seq, rec = _prune(model, calib, "sequential")
    e_one, e_seq = _error(model, one_shot, held), _error(model, seq, held)
    # same channels removed: only the refit differs
    assert [p.shape for p in seq.parameters()] == [p.shape for p in one_shot.parameters()]
    assert rec.info["sequential_passes"] >= 6  # every pruned consumer refit in turn
    assert e_seq < 0.8 * e_one, (e_seq, e_one)


def test_unknown_refit_is_refused_before_any_change(residual):
    model, calib, _ = residual
    m = copy.deepcopy(model)
    with pytest.raises(InputError):
        api.edit(m, "modhifi-p", None, data=calib, ratio=0.5, refit="nope")
    assert all(
        torch.equal(a, b) for a, b in zip(m.state_dict().values(), model.state_dict().values())
    )


def test_sequential_refit_without_compensation_is_refused(residual):
    model, calib, _ = residual
    m = copy.deepcopy(model)
    with pytest.raises(InputError, match="needs compensate=True"):
        api.edit(m, "modhifi-p", None, data=calib, ratio=0.5, refit="sequential", compensate=False)
    assert all(
        torch.equal(a, b) for a, b in zip(m.state_dict().values(), model.state_dict().values())
    )


def _pruned_with(model, calib, **kw):
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = api.edit(m, "modhifi-p", None, data=calib, ratio=0.5, calib_samples=512, **kw)
    return m, rec


def test_auto_refit_is_sequential_within_its_budget_and_dense_beyond(residual):
    """refit='auto' (the default) runs the sequential refit exactly when the estimate of its
    passes (refit layers x samples x MACs per sample) is within ``sequential_gmacs``: the same
    weights as asking for it, or as refit='dense' when the budget is too small."""
    model, calib, _ = residual
    seq, _ = _prune(model, calib, "sequential")
    dense, _ = _prune(model, calib, "dense")
    auto, rec = _pruned_with(model, calib)
    (estimate,) = rec.info["sequential_gmacs"]
    assert 0 < estimate <= 1000 and rec.info["sequential_passes"] >= 6
    small, rec_small = _pruned_with(model, calib, sequential_gmacs=estimate / 2)
    assert rec_small.info["sequential_passes"] == 0
    for got, want in ((auto, seq), (small, dense)):
        assert all(
            torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values())
        )


@pytest.mark.parametrize("arch", ["residual", "chain"])
def test_passes_started_part_way_give_the_same_refit(residual, monkeypatch, arch):
    """The refit's passes start at the chain link above each layer (cached inputs, the links
    before it skipped): the weights are exactly those of whole passes, and most passes resume."""
    from pluginedit.editors.common import seqrefit

    model, calib, _ = residual
    if arch == "chain":  # a VGG-like nn.Sequential: every conv is a link
        torch.manual_seed(1)
        layers = [nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU()]
        layers += [nn.Conv2d(12, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU()] * 1
        layers += [nn.Conv2d(12, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(48, 5)]
        model = nn.Sequential(*layers)
        recalibrate_bn(model, calib)
        model.eval()
    whole_run = {}
    for cache in (0, seqrefit.CACHE):
        monkeypatch.setattr(seqrefit, "CACHE", cache)
        whole_run[cache] = _prune(model, calib, "sequential")
    (a, rec_a), (b, rec_b) = whole_run[0], whole_run[seqrefit.CACHE]
    assert rec_a.info["sequential_resumed"] == 0
    assert rec_b.info["sequential_resumed"] >= rec_b.info["sequential_passes"] - 1 >= 2
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
