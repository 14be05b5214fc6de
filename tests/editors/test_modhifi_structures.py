"""ModHiFi-P and the fidelity scorer on the structures of the torchvision family (issue 24 item
2): grouped convolutions (ResNeXt, RegNet), a conv + global-pooling head (SqueezeNet),
concatenated branches (SqueezeNet's Fire, GoogLeNet's Inception), depthwise-separable blocks
(MobileNet) and a Linear reading a flattened C x H x W map (VGG), on small random-init models
with a fixed calibration set. Each: modhifi-p at 0.5 runs, the output stays finite and of the
same shape, parameters go, and the compensated model is closer to the dense one on held-out
inputs than the same pruning without delta*. Plus the statistics behind it checked against
brute force (pair scores, kept-input refits, per-position refits)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import pluginedit as pe
from pluginedit.capture import Request, collect, head_layers
from pluginedit.core.outputs import primary
from pluginedit.editors.common.bnrecal import recalibrate_bn
from pluginedit.editors.common.compensate import compensate, refit_from
from pluginedit.linalg import IllConditionedWarning
from pluginedit.scorers.fidelity import pair_scores, pair_scores_from
from pluginedit.stats import Gram
from pluginedit.stats.layer_io import KeptStats, PairStats, conv_geometry


def cbr(cin, cout, k=3, s=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class XBlock(nn.Module):
    """ResNeXt bottleneck: 1x1, grouped 3x3, 1x1, residual add."""

    def __init__(self, c, w, groups):
        super().__init__()
        self.a, self.b = cbr(c, w, 1), cbr(w, w, 3, groups=groups)
        self.c = nn.Sequential(nn.Conv2d(w, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.c(self.b(self.a(x))))


def resnext():
    return nn.Sequential(
        cbr(3, 32),
        XBlock(32, 32, 4),
        XBlock(32, 32, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class Fire(nn.Module):
    def __init__(self, cin, sq, ex):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, sq, 1), nn.ReLU(inplace=True))
        self.e1 = nn.Sequential(nn.Conv2d(sq, ex, 1), nn.ReLU(inplace=True))
        self.e3 = nn.Sequential(nn.Conv2d(sq, ex, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


class Squeeze(nn.Module):
    """SqueezeNet's layout: Fire modules, and a head that is a 1x1 conv, ReLU and pooling."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1),
            nn.ReLU(inplace=True),
            Fire(32, 8, 16),
            Fire(32, 8, 16),
            nn.MaxPool2d(2),
            Fire(32, 16, 32),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Conv2d(64, 10, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class Inception(nn.Module):
    def __init__(self, cin, b1, b3r, b3, bp):
        super().__init__()
        self.b1 = cbr(cin, b1, 1)
        self.b3 = nn.Sequential(cbr(cin, b3r, 1), cbr(b3r, b3, 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(cin, bp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.bp(x)], 1)


def googlenet():
    return nn.Sequential(
        cbr(3, 32),
        Inception(32, 16, 16, 24, 8),
        Inception(48, 16, 16, 24, 8),
        cbr(48, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def mobilenet():
    def separable(cin, cout, s=1):
        return nn.Sequential(cbr(cin, cin, 3, s, groups=cin), cbr(cin, cout, 1))

    return nn.Sequential(
        cbr(3, 16, 3, 2),
        separable(16, 32),
        separable(32, 64, 2),
        separable(64, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def vgg_flat():
    return nn.Sequential(
        cbr(3, 16),
        nn.MaxPool2d(2),
        cbr(16, 32),
        nn.MaxPool2d(2),
        cbr(32, 32),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 16, 64),
        nn.ReLU(inplace=True),
        nn.Linear(64, 10),
    )


def regnet():
    from transformers import RegNetConfig, RegNetForImageClassification

    cfg = RegNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 2],
        groups_width=8,
        layer_type="x",
        num_labels=10,
    )
    return RegNetForImageClassification(cfg)


MODELS = {
    "resnext": resnext,
    "regnet": regnet,
    "squeezenet": Squeeze,
    "googlenet": googlenet,
    "mobilenet": mobilenet,
    "vgg_flat": vgg_flat,
}


def _out(model, x):
    with torch.no_grad():
        return primary(model.eval()(x))


def _data(n=256, px=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, px, px, generator=g), torch.zeros(n, dtype=torch.long)


def _built(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    recalibrate_bn(model, _data(seed=1))  # BN statistics of the data, as a trained model has
    return model


def _pruned(model, x, y, **kw):
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)  # random init: dead channels
        rec = pe.edit(m, "modhifi-p", None, data=(x, y), ratio=0.5, calib_samples=len(y), **kw)
    return m, rec


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_modhifi_p_on_each_structure_and_compensation_helps(name):
    model = _built(name)
    x, y = _data(512 if name == "vgg_flat" else 256)
    held = _data(64, seed=2)[0]
    dense = _out(model, held)
    m, rec = _pruned(model, x, y)
    plain, _ = _pruned(model, x, y, compensate=False)
    out = _out(m, held)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    assert rec.info["params_after"] < 0.5 * rec.info["params_before"]
    assert rec.info["compensation_modes"] and not rec.info["uncompensated"]
    err, err_plain = _rel(out, dense), _rel(_out(plain, held), dense)
    assert err < 0.9 * err_plain, (err, err_plain)


def test_a_conv_and_pooling_head_is_the_head_and_stays_whole():
    model = _built("squeezenet")
    assert head_layers(model, _data(1)[0]) == ["classifier.1"]
    m, rec = _pruned(model, *_data())
    assert m.classifier[1].out_channels == 10 and "classifier.1" not in rec.changes
    assert m.classifier[1].in_channels == 32  # its inputs (a concatenation) were pruned


def test_concatenation_consumer_is_refit_once_against_its_final_inputs():
    """A Fire module's squeeze conv reads the concatenation of two expand convs: both groups
    remove its inputs; it is refit once, on the Gram of the inputs that stay."""
    model = _built("squeezenet")
    m, rec = _pruned(model, *_data())
    assert m.features[3].squeeze[0].in_channels == 16  # 32 concatenated inputs, half gone
    assert rec.info["compensation_modes"]["exact"] >= 5


def test_flattened_map_consumer_stays_within_the_memory_budget(monkeypatch):
    """A budget smaller than the Gram of the Linear's kept inputs: per-position refits of its
    kept channels (S = 16 positions), still closer to dense than no delta*."""
    model = _built("vgg_flat")
    x, y = _data(512)
    held = _data(64, seed=2)[0]
    dense = _out(model, held)
    monkeypatch.setenv("PLUGINEDIT_GRAM_BUDGET", "200K")
    m, rec = _pruned(model, x, y)
    assert rec.info["compensation_modes"].get("position", 0) >= 1
    plain, _ = _pruned(model, x, y, compensate=False)
    assert _rel(_out(m, held), dense) < 0.9 * _rel(_out(plain, held), dense)
    monkeypatch.setenv("PLUGINEDIT_GRAM_BUDGET", "1K")
    with pytest.warns(UserWarning, match="without delta"):
        _, rec = _pruned(model, x, y)
    assert len(rec.info["uncompensated"]) == 4


def test_pair_statistics_give_the_gram_scores():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )
    x = torch.randn(64, 3, 8, 8) + 0.5
    for path in ("2", "5"):
        mod = model.get_submodule(path)
        g = Request(path, Gram.for_module(mod, backend="torch"), "input")
        conv = dict(conv=conv_geometry(mod)) if isinstance(mod, nn.Conv2d) else {}
        p = Request(path, PairStats(mod.weight, mod.bias, blocks=True, **conv), "io")
        got = collect(model, (x, torch.zeros(64, dtype=torch.long)), [g, p], batch_size=16)
        for v in ("centred", "uncentred", "fidelity", "alpha"):
            want = pair_scores(mod.weight, got[g], v)
            torch.testing.assert_close(pair_scores_from(got[p], v), want, rtol=1e-4, atol=1e-6)


def test_grouped_pair_scores_match_materialised_contributions():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=4)
    x = torch.relu(torch.randn(32, 8, 6, 6))
    st = PairStats(conv.weight, conv.bias, conv_geometry(conv), blocks=True)
    with torch.no_grad():
        st.update((x, conv(x)))
        w, xd = conv.weight.double(), x.double()
        a = torch.zeros(32, 12, 2, 6, 6, dtype=torch.float64)  # A_ci within output c's group
        for c in range(12):
            for j in range(2):
                k = c // 3 * 2 + j
                a[:, c, j] = nn.functional.conv2d(
                    xd[:, k : k + 1], w[c : c + 1, j : j + 1], padding=1
                )[:, 0]
    a = a.permute(1, 2, 0, 3, 4).flatten(2)
    yy = a.sum(1, keepdim=True)
    r, e_a, e_y = (yy * a).mean(2), a.square().mean(2), yy.square().mean(2)
    ac = a - a.mean(2, keepdim=True)
    yc = ac.sum(1, keepdim=True)
    want = {
        "uncentred": r / e_y,
        "fidelity": r.square() / (e_a * e_y),
        "alpha": r / e_a,
        "centred": (yc * ac).mean(2) / yc.square().mean(2),
    }
    for v, ref in want.items():
        torch.testing.assert_close(pair_scores_from(st, v), ref, rtol=1e-4, atol=1e-6)


def _kept(mod, x, keep, rows=None, **kw):
    rows = torch.arange(mod.weight.shape[0]) if rows is None else rows
    conv = dict(conv=conv_geometry(mod)) if isinstance(mod, nn.Conv2d) else {}
    st = KeptStats(mod.weight, keep, rows, mod.bias, backend="torch", **conv, **kw)
    with torch.no_grad():
        for part in x.split(16):
            st.update((part, mod(part)))
    out = copy.deepcopy(mod)
    refit_from(out, st, shrink=False)
    return out


def test_kept_gram_refit_equals_the_full_gram_refit():
    """delta* from the Gram of the kept inputs only equals delta* from the full Gram."""
    torch.manual_seed(0)
    conv, x = nn.Conv2d(8, 6, 3, padding=1), torch.relu(torch.randn(64, 8, 7, 7) + 0.3)
    keep = torch.tensor([0, 2, 3, 5, 6])
    g = Gram.for_module(conv, backend="torch")
    g.update(x)
    ref = copy.deepcopy(conv)
    compensate(ref, g, torch.isin(torch.arange(8), keep), conv="full")
    got = _kept(conv, x, keep)
    torch.testing.assert_close(got.weight, ref.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.bias, ref.bias, rtol=1e-4, atol=1e-5)


def test_position_refit_is_least_squares_at_each_position():
    """Position mode on a Linear reading 5 channels x 4 positions: at each position the kept
    channels refit the removed ones there (centred least squares, tiny ridge)."""
    torch.manual_seed(0)
    lin, x = nn.Linear(20, 3), torch.randn(400, 20) @ torch.randn(20, 20) + 1
    keep = torch.tensor([0, 2, 3])
    got = _kept(lin, x, keep, mode="position", block=4).weight.detach().view(3, 5, 4)
    xs, w = x.view(-1, 5, 4).double(), lin.weight.detach().double().view(3, 5, 4)
    for s in range(4):
        pk, z = xs[:, keep, s], xs[:, [1, 4], s] @ w[:, [1, 4], s].T
        d = torch.linalg.lstsq(pk - pk.mean(0), z - z.mean(0)).solution
        torch.testing.assert_close(
            got[:, keep, s].double(), w[:, keep, s] + d.T, rtol=1e-3, atol=1e-4
        )
    assert (got[:, [1, 4]] == 0).all()


def test_same_padding_convs_are_scored_and_refit_as_their_numeric_padding():
    """transformers' EfficientNet pads with ``padding="same"``: scores and delta* read it as
    the numbers it pads by, so the edit is the one on the same model with numeric padding, and
    no consumer is left uncompensated."""
    model = _built("mobilenet")
    same = copy.deepcopy(model)
    for m in same.modules():
        if isinstance(m, nn.Conv2d) and m.stride == (1, 1):
            m.padding = "same"
    x, y = _data()
    held = _data(16, seed=2)[0]
    assert torch.allclose(_out(same, held), _out(model, held), atol=1e-6)
    a, rec_a = _pruned(model, x, y)
    b, rec_b = _pruned(same, x, y)
    assert rec_b.changes == rec_a.changes and not rec_b.info["uncompensated"]
    assert rec_b.info["compensation_modes"] == rec_a.info["compensation_modes"]
    assert torch.allclose(_out(b, held), _out(a, held), atol=1e-4, rtol=1e-4)
