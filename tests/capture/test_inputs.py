"""Model inputs: the classifier head is always found (or the call refuses), any Dataset gives a
proper example batch, and scoring reads the model without changing it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import pluginedit as pe
from pluginedit.capture import collect, example_batch, head_layers
from pluginedit.capture.collect import Request
from pluginedit.core.errors import InputError
from pluginedit.stats import Gram


def _net(in_ch: int = 3, classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
        nn.ReLU(),
        nn.Linear(6, classes),
    ).eval()


def _data(n: int = 20, in_ch: int = 3, classes: int = 5):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, in_ch, 12, 12, generator=g), torch.arange(n) % classes


def test_score_without_inputs_refuses_rather_than_include_the_head():
    with pytest.raises(InputError, match="classifier head"):
        pe.score(_net(), "l1")


@pytest.mark.parametrize("how", ["example", "num_classes", "data"])
def test_score_never_includes_the_head(how):
    model, (x, y) = _net(), _data()
    kw = {
        "example": dict(example_inputs=x[:1]),
        "num_classes": dict(num_classes=5),
        "data": dict(data=(x, y)),
    }[how]
    scores = pe.score(model, "l1", **kw)
    assert "9" not in scores and set(scores) == {"0", "3", "7"}


def test_mask_after_default_scoring_keeps_every_logit():
    model, (x, _) = _net(), _data()
    scores = pe.score(model, "l1", example_inputs=x[:1])
    pe.edit(model, "mask", scores, ratio=0.5)
    assert model[9].weight.abs().sum(1).gt(0).all()


def test_plain_dataset_gives_a_batched_example():
    """A Dataset yields unbatched samples; the example must still be [1, C, H, W]."""
    x, y = _data()
    ds = TensorDataset(x, y)
    assert example_batch(ds).shape == (1, 3, 12, 12)
    assert head_layers(_net(), example_batch(ds)) == ["9"]
    scores = pe.score(_net(), "fidelity", data=ds)
    assert set(scores) == {"0", "3", "7"}


def test_collect_returns_statistics_by_handle():
    model, (x, y) = _net(), _data()
    a = Request("3", Gram.for_module(model[3]), "input")
    b = Request("3", Gram.for_module(model[3]), "input")  # same place, distinct handle
    got = collect(model, (x, y), [a, b])
    assert got[a] is a.statistic and got[b] is b.statistic and len(got) == 2
    torch.testing.assert_close(got[a].second_moment(), got[b].second_moment())


@pytest.mark.parametrize("scorer", ["l1", "random", "fidelity", "taylor", "tvs", "witness"])
def test_scoring_a_train_mode_model_changes_nothing(scorer):
    model, (x, y) = _net(), _data(40)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pe.score(model, scorer, data=(x, y))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
