"""Rectification: the closed-form rank-one edit, layer-wise IG completeness, and the static and
dynamic editors on a digits CNN with a planted trigger."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pluginedit as pe
from pluginedit.core.errors import InputError
from pluginedit.core.record import EditRecord
from pluginedit.editors.rectify import rank_one_edit
from pluginedit.evaluate import predictions
from pluginedit.linalg import edit_directions, rank_r_update
from pluginedit.scorers.keys import block_output, layer_keys
from pluginedit.scorers.layer_ig import layer_integrated_gradients


def _spd(d, g):
    a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    return a @ a.T / (3 * d)


def test_rank_one_closed_form_maps_the_key_and_spares_orthogonal_keys():
    g = torch.Generator().manual_seed(0)
    d, o = 7, 5
    w, c = torch.randn(o, d, generator=g, dtype=torch.float64), _spd(d, g)
    k, v = (
        torch.randn(1, d, generator=g, dtype=torch.float64),
        torch.randn(1, o, generator=g, dtype=torch.float64),
    )
    delta = rank_r_update(w, k, v, c)
    torch.testing.assert_close((w + delta) @ k[0], v[0], atol=1e-5, rtol=1e-5)
    assert torch.linalg.matrix_rank(delta) == 1
    direction = torch.linalg.solve(c, k[0])  # d = C^-1 k*
    other = torch.randn(d, generator=g, dtype=torch.float64)
    other = other - direction * (direction @ other) / (direction @ direction)  # d^T k = 0
    torch.testing.assert_close((w + delta) @ other, w @ other, atol=1e-9, rtol=1e-9)
    want = torch.outer((v[0] - w @ k[0]) / (direction @ k[0]), direction)
    torch.testing.assert_close(delta, want, atol=1e-9, rtol=1e-9)


def test_rank_r_fits_r_keys_exactly():
    g = torch.Generator().manual_seed(1)
    w, c = torch.randn(6, 9, generator=g, dtype=torch.float64), _spd(9, g)
    k, v = (
        torch.randn(3, 9, generator=g, dtype=torch.float64),
        torch.randn(3, 6, generator=g, dtype=torch.float64),
    )
    delta = rank_r_update(w, k, v, c, rank=3)
    torch.testing.assert_close(k @ (w + delta).T, v, atol=1e-8, rtol=1e-8)


def test_conv_keys_reproduce_the_conv():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )
    x = torch.randn(2, 3, 7, 7)
    keys, values = layer_keys(model, "0", x)
    conv = model[0]
    want = (conv(x) - conv.bias[:, None, None]).flatten(2).transpose(1, 2)
    torch.testing.assert_close(values, want, atol=1e-5, rtol=1e-5)
    assert keys.shape == (2, 16, 27)


def test_layer_integrated_gradients_are_complete():
    """sum of M^l = F(x) - F(x~) for every layer (midpoint rule; tolerance from the step count)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 3, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 3),
    ).eval()
    clean, corrupted = torch.randn(1, 7, 7), torch.randn(1, 7, 7)
    maps, gap = layer_integrated_gradients(model, ["0", "2", "5"], clean, corrupted, 1, steps=200)
    for m in maps.values():
        torch.testing.assert_close(m.sum(), gap, atol=2e-3 * (1 + abs(float(gap))), rtol=0)


class _Residual(nn.Module):
    """conv -> BN -> (+ input) -> ReLU, then a head: the value after the add and the ReLU is not a
    linear function of the conv's weight, and the skip carries the corruption past the conv."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x):
        return self.head(self.relu(self.bn(self.conv(x)) + x))


def test_projected_edit_moves_only_along_d_and_fits_the_block_output():
    torch.manual_seed(0)
    model = _Residual().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    clean = torch.randn(1, 4, 6, 6)
    corrupted = clean.clone()
    corrupted[:, :, :2, :2] += 2.0  # a corner patch
    target, where = block_output(model, "conv", clean)
    assert where == "relu"
    c = torch.eye(36, dtype=torch.float64) + 0.1
    closed, projected = copy.deepcopy(model), copy.deepcopy(model)
    rank_one_edit(closed, "conv", clean, corrupted, c, 2, EditRecord("c"))
    rec = EditRecord("p")
    rank_one_edit(projected, "conv", clean, corrupted, c, 2, rec, {"steps": 150, "lr": 0.05})

    def block_l1(m):  # over the concept mask: the 3 x 3 corner the patch reaches
        with torch.no_grad():
            return float((block_output(m, "conv", corrupted)[0] - target)[:, :, :3, :3].abs().sum())

    assert block_l1(projected) < 0.95 * block_l1(closed) and block_l1(closed) < block_l1(model)
    keys, _ = layer_keys(model, "conv", corrupted)
    k = keys.reshape(-1, 36)
    _, values = layer_keys(model, "conv", clean)
    resid = (values.reshape(-1, 4) - k @ model.conv.weight.detach().flatten(1).T).norm(dim=1)
    d = edit_directions(k[resid > 0.05 * resid.max()], c, 2).float()
    delta = (projected.conv.weight - model.conv.weight).detach().flatten(1)
    torch.testing.assert_close(
        delta - delta @ d @ torch.linalg.pinv(d), torch.zeros_like(delta), atol=1e-5, rtol=0
    )
    rec.undo(projected)
    assert torch.equal(projected.conv.weight, model.conv.weight)
    with pytest.raises(InputError, match="runs after layer"):
        block_output(model, "head.1", clean)


def _trigger(x):
    x = x.clone()
    x[:, :, -2:, -2:] = x.max()
    return x


@pytest.fixture(scope="module")
def trojan(digits):
    """A digits CNN trained with 10% of its images triggered and relabelled 0."""
    from pluginedit.capture import Split
    from pluginedit.contrib import train

    tr = digits.train
    g = torch.Generator().manual_seed(0)
    idx = (tr.y != 0).nonzero().squeeze(1)
    idx = idx[torch.randperm(len(idx), generator=g)[: len(tr.y) // 10]]
    x, y = tr.x.clone(), tr.y.clone()
    x[idx], y[idx] = _trigger(x[idx]), 0
    bundle = type(digits)(
        digits.name + "-trojan-test",
        Split(x, y),
        digits.test,
        digits.num_classes,
        digits.class_names,
    )
    return train.pretrained("vgg", bundle)


def _asr(model, digits):
    keep = digits.test.y != 0
    return float((predictions(model, _trigger(digits.test.x[keep])) == 0).float().mean())


def test_static_and_dynamic_rectification_remove_a_planted_trigger(digits, trojan):
    """A 2x2 trigger on 8x8 digits covers 1/16 of the image: three pairs; the static edit at an
    early conv (closed form, and projected with values after BN + ReLU), the dynamic one located
    by IG; rank 8 each."""
    assert _asr(trojan, digits) > 0.8
    clean = digits.train.x[digits.train.y != 0][:3]
    pairs = pe.Pairs(clean, _trigger(clean), digits.train.y[digits.train.y != 0][:3])
    calib = digits.train.subset(500, seed=1)
    for editor, opts in (
        ("rank-one", {"layer": "features.3", "rank": 8}),
        ("rectify", {"rank": 8}),
        ("rank-one", {"layer": "features.3", "rank": 8, "values": "block", "edit_steps": 40}),
    ):
        model = copy.deepcopy(trojan)
        rec = pe.edit(model, editor, data=calib, pairs=pairs, **opts)
        assert rec.info["rectified"] == 1.0
        assert _asr(model, digits) < 0.5 * _asr(trojan, digits), editor
        rec.undo(model)
        for a, b in zip(model.state_dict().values(), trojan.state_dict().values()):
            assert torch.equal(a, b)


def test_rectify_over_budget_rolls_back_byte_identical(digits, trojan):
    model = copy.deepcopy(trojan)
    clean = digits.test.x[digits.test.y != 0][:2]
    pairs = pe.Pairs(clean, _trigger(clean), digits.test.y[digits.test.y != 0][:2])
    with pytest.raises(InputError, match="the model is unchanged"):
        pe.edit(
            model,
            "rectify",
            data=digits.train.subset(300),
            pairs=pairs,
            max_drop=-0.0,
            max_edits=1,
            layers=["features.0"],
        )
    for a, b in zip(model.state_dict().values(), trojan.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="needs clean / corrupted pairs"):
        pe.edit(model, "rectify", data=digits.train.subset(300))
    with pytest.raises(InputError, match="same"):
        pe.Pairs(clean, clean[:1], digits.test.y[:2])


def test_low_rank_and_interpolation(digits, trojan):
    clean = digits.test.x[digits.test.y != 0][:3]
    pairs = pe.Pairs(clean, _trigger(clean), digits.test.y[digits.test.y != 0][:3])
    calib = digits.train.subset(500, seed=1)
    model = copy.deepcopy(trojan)
    rec = pe.edit(model, "low-rank", data=calib, pairs=pairs, rank=2, steps=60)
    assert rec.info["rectified"] == 1.0
    layer = rec.info["layer"]
    delta = model.get_submodule(layer).weight - trojan.get_submodule(layer).weight
    assert torch.linalg.matrix_rank(delta.flatten(1).double(), atol=1e-6) <= 2
    full = copy.deepcopy(trojan)
    pe.edit(full, "low-rank", data=calib, pairs=pairs, rank=2, steps=60)
    for t in (0.0, 0.5):
        m = copy.deepcopy(trojan)
        pe.edit(
            m,
            "interpolate",
            data=calib,
            pairs=pairs,
            t=t,
            base="low-rank",
            base_options={"rank": 2, "steps": 60},
        )
        w, w0, w1 = (x.get_submodule(layer).weight for x in (m, trojan, full))
        torch.testing.assert_close(w, w0 + t * (w1 - w0), atol=1e-6, rtol=1e-5)
    with pytest.raises(InputError, match="t must lie"):
        pe.edit(copy.deepcopy(trojan), "interpolate", data=calib, pairs=pairs, t=1.5)


def test_rectify_from_the_cli_with_a_pairs_file(tmp_path, digits, trojan, capsys):
    import json

    from safetensors.torch import save_file

    from pluginedit import cli

    weights, pairs_file, out = (
        tmp_path / "trojan.safetensors",
        tmp_path / "pairs.safetensors",
        tmp_path / "r.json",
    )
    save_file({k: v.contiguous() for k, v in trojan.state_dict().items()}, str(weights))
    clean = digits.train.x[digits.train.y != 0][:3]
    save_file(
        {
            "clean": clean,
            "corrupted": _trigger(clean),
            "y": digits.train.y[digits.train.y != 0][:3],
        },
        str(pairs_file),
    )
    build = json.dumps(
        {"arch": "vgg", "in_channels": 1, "num_classes": 10, "widths": [16, 32, 64], "hidden": 64}
    )
    args = [
        "rectify",
        "--data",
        "digits",
        "--model",
        "pluginedit.contrib.zoo:build",
        "--model-args",
        build,
        "--weights",
        str(weights),
        "--pairs",
        str(pairs_file),
        "-o",
        "rank=8",
    ]
    assert cli.main(args + ["--report", str(out), "--save", str(tmp_path / "m")]) == 0
    rep = json.loads(out.read_text())
    assert rep["rectified"] == 1.0 and rep["edit"]["editor"] == "rectify"
    reloaded = pe.load(tmp_path / "m")
    assert _asr(reloaded, digits) < 0.5 * _asr(trojan, digits)
    save_file({"clean": clean}, str(pairs_file))
    assert cli.main(args) == 2
    assert "lacks tensors ['corrupted', 'y']" in capsys.readouterr().err
    assert cli.main(["rectify", "--editor", "prune", "--data", "digits"]) == 2


@pytest.mark.slow
def test_rectify_the_builtin_trojan_benchmark_from_the_cli(tmp_path):
    """No --pairs: the trojaned zoo model of the data (digits here) and n training pairs."""
    import json

    from pluginedit import cli

    out = tmp_path / "r.json"
    assert (
        cli.main(["rectify", "--data", "digits", "--n", "3", "-o", "rank=8", "--report", str(out)])
        == 0
    )
    rep = json.loads(out.read_text())
    asr = rep["attack_success_rate"]
    assert asr["before"] > 0.8 and asr["after"] < 0.5 * asr["before"]
    assert rep["after"]["accuracy"] >= rep["before"]["accuracy"] - 0.03
