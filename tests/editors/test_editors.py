"""Editors: physical pruning through torch-pruning, reversible masking, atomic failure, bad input."""

import copy

import pytest
import torch
from torch import nn

import pluginedit as pe
from pluginedit.contrib import zoo
from pluginedit.core.errors import EditError, InputError
from pluginedit.core.plugin import Editor
from pluginedit.evaluate import accuracy


def params(model):
    return sum(p.numel() for p in model.parameters())


def snapshot(model):
    return {k: v.clone() for k, v in list(model.named_parameters()) + list(model.named_buffers())}


def assert_identical(model, snap):
    now = snapshot(model)
    assert now.keys() == snap.keys()
    for key, value in snap.items():
        assert now[key].dtype == value.dtype and now[key].shape == value.shape, key
        as_bytes = lambda t: t.detach().reshape(-1).view(torch.uint8)  # noqa: E731 (NaN-proof, -0.0-proof)
        assert torch.equal(as_bytes(now[key]), as_bytes(value)), key


@pytest.mark.parametrize("scorer", ["l1", "l2", "random", "taylor"])
def test_prune_half_of_the_channels_with_every_builtin_scorer(digits_vgg, digits, scorer):
    model = copy.deepcopy(digits_vgg)
    scores = pe.score(model, scorer, data=digits.train)
    assert set(scores) == {
        p for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    } - {"classifier.3"}
    record = pe.edit(model, "prune", scores, ratio=0.5, example_inputs=digits.test.x[:1])
    assert params(digits_vgg) >= 3 * params(model)
    assert model(digits.test.x[:5]).shape == (5, 10)
    assert (
        sum(map(len, record.changes.values())) == sum(record.info["channels_before"].values()) // 2
    )


def test_prune_removes_exactly_the_lowest_scored_channels(digits_vgg, digits):
    model = copy.deepcopy(digits_vgg)
    scores = pe.score(model, "l1", example_inputs=digits.test.x[:1])
    kept = torch.sort(scores["features.0"].argsort(descending=True)[:16]).values
    expected = model.features[0].weight[kept].clone()
    pe.edit(model, "prune", scores, ratio=0.5, example_inputs=digits.test.x[:1])
    torch.testing.assert_close(model.features[0].weight, expected, rtol=0, atol=0)


def test_residual_network_prunes_coupled_channels(digits):
    model = zoo.build("resnet", 1, 10, **zoo.default_config("resnet", "digits"))
    pe.prune(model, "l1", 0.5, example_inputs=digits.test.x[:1])
    block = model.layers[1][0]
    assert (
        block.conv2.out_channels == block.downsample[0].out_channels == model.fc.in_features == 16
    )
    assert model(digits.test.x[:3]).shape == (3, 10)


def test_mask_zeroes_channel_output_and_undo_restores(digits_vgg, digits):
    model = copy.deepcopy(digits_vgg).eval()
    snap = snapshot(model)
    record = pe.edit(model, "mask", None, indices={"features.0": [1, 4]})
    bn_out = {}
    model.features[1].register_forward_hook(lambda m, i, o: bn_out.setdefault("y", o))
    model(digits.test.x[:8])
    assert bn_out["y"][:, [1, 4]].abs().max() == 0 and bn_out["y"][:, 0].abs().max() > 0
    record.undo(model)
    assert_identical(model, snap)


class ExplodingEditor(Editor):
    name = "exploding"

    def apply(self, model, scores, inputs):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0)
        model.features[0] = nn.Identity()
        raise RuntimeError("boom midway")


def test_editor_raising_midway_leaves_model_byte_identical(digits_vgg):
    model = copy.deepcopy(digits_vgg)
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="boom midway"):
        pe.edit(model, ExplodingEditor(), None)
    assert_identical(model, snap)
    assert isinstance(model.features[0], nn.Conv2d)


def test_prune_failing_after_some_groups_is_rolled_back(digits_vgg, digits, monkeypatch):
    model = copy.deepcopy(digits_vgg)
    snap = snapshot(model)
    import torch_pruning as tp

    calls = {"n": 0}
    real = tp.dependency.Group.prune

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(self, *a, **k)

    monkeypatch.setattr(tp.dependency.Group, "prune", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        pe.prune(model, "l1", 0.5, example_inputs=digits.test.x[:1])
    assert calls["n"] == 3
    assert_identical(model, snap)
    assert accuracy(model, digits.test, 10)[0] == accuracy(digits_vgg, digits.test, 10)[0]


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_unit_interval(digits_vgg, digits, ratio):
    model = copy.deepcopy(digits_vgg)
    snap = snapshot(model)
    with pytest.raises(InputError, match=r"ratio must lie in \(0, 1\)"):
        pe.prune(model, "l1", ratio, example_inputs=digits.test.x[:1])
    assert_identical(model, snap)


class ListOutput(nn.Module):
    """Returns Python floats: torch-pruning cannot trace through it."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3), nn.Linear(8, 2)

    def forward(self, x):
        return {"logits": self.fc(self.conv(x).mean((2, 3))).tolist()}


class NumpyDetour(nn.Module):
    """Leaves torch through numpy: the graph torch-pruning sees is cut."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.from_numpy(self.conv(x).mean((2, 3)).detach().numpy()))


@pytest.mark.parametrize(
    "cls,error,match",
    [(ListOutput, InputError, "no tensor in it"), (NumpyDetour, EditError, "torch-pruning")],
)
def test_untraceable_model_is_a_clear_error_and_untouched(cls, error, match):
    model = cls()
    snap = snapshot(model)
    scores = pe.Scores({"conv": torch.rand(8)}, "l1")
    with pytest.raises(error, match=match):
        pe.edit(model, "prune", scores, ratio=0.5, example_inputs=torch.randn(1, 1, 8, 8))
    assert_identical(model, snap)


def test_score_bad_input(digits_vgg, digits):
    x, y = digits.train.x[:64], digits.train.y[:64]
    with pytest.raises(InputError, match="labels out of range"):
        pe.score(digits_vgg, "taylor", data=(x, torch.where(y == 3, 12, y)))
    with pytest.raises(InputError, match="1 class"):
        pe.score(digits_vgg, "taylor", data=digits.train.subset(classes=[3]))
    bad = x.clone()
    bad[5, 0, 2, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        pe.score(digits_vgg, "taylor", data=(bad, y))
    with pytest.raises(InputError, match="needs data"):
        pe.score(digits_vgg, "taylor")
    with pytest.raises(InputError, match="unknown scorer 'magic'; known: .*l1"):
        pe.score(digits_vgg, "magic")
    with pytest.raises(InputError, match="not conv/linear layers"):
        pe.score(digits_vgg, "l1", targets=["features.1"])
