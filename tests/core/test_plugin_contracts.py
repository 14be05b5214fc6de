"""Typed plugin options, editor flags and the in-place atomic edit."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import pytest
import torch
from torch import nn

import pluginedit as pe
from pluginedit.core import registry
from pluginedit.core.errors import InputError
from pluginedit.core.plugin import EDITOR_KINDS, describe
from pluginedit.core.record import atomic


@dataclass(frozen=True)
class _Opts:
    ratio: float = pe.option(0.5, "fraction")
    mode: Literal["a", "b"] = pe.option("a", "a choice")
    steps: int = pe.option(1, "an int")
    layers: list | None = pe.option(None, "paths")

    def __post_init__(self):
        if not 0 < self.ratio < 1:
            raise InputError(f"ratio must lie in (0, 1), got {self.ratio}")


class _Toy(pe.Scorer):
    name = "toy"
    Options = _Opts


def test_options_are_validated_once_with_clear_errors():
    assert _Toy(ratio=0.25).options == _Opts(ratio=0.25)
    assert _Toy().options == _Opts()
    with pytest.raises(
        InputError,
        match=r"unknown option\(s\) \['ratoi'\].*known: \['layers', 'mode', 'ratio', 'steps'\]",
    ):
        _Toy(ratoi=0.3)
    with pytest.raises(InputError, match="'mode' of 'toy' must be one of \\['a', 'b'\\]"):
        _Toy(mode="c")
    with pytest.raises(InputError, match="'steps' of 'toy' must be int"):
        _Toy(steps=1.5)
    with pytest.raises(InputError, match="'steps' of 'toy' must be int"):
        _Toy(steps=True)
    with pytest.raises(InputError, match="ratio must lie in"):
        _Toy(ratio=1.5)
    assert _Toy(ratio=0.5).options_dict() == {"ratio": 0.5, "mode": "a", "steps": 1, "layers": None}


@pytest.mark.parametrize("kind", ["scorer", "editor"])
def test_every_builtin_declares_typed_options_with_help(kind):
    for name, info in registry.plugins(kind).items():
        if info.dist != "pluginedit":
            continue
        for opt, _default, help_ in describe(info.obj):
            assert help_, f"{kind} {name}: option {opt!r} has no help"
        if kind == "editor":
            assert info.obj.kind in EDITOR_KINDS, name
        info.obj()  # the defaults themselves validate


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)
        self.lock = threading.Lock()  # not picklable, not deep-copyable

    def forward(self, x):
        return self.b(self.bn(self.a(x)).mean((2, 3)))


def test_typo_in_a_builtin_option_is_an_error():
    data = (torch.randn(8, 3, 6, 6), torch.arange(8) % 4)
    with pytest.raises(InputError, match="unknown option.*max_sample"):
        pe.score(_Net(), "taylor", data=data, max_sample=10)
    with pytest.raises(InputError, match="unknown option.*bogus"):
        pe.edit(_Net(), "mask", indices={"a": [0]}, bogus=1)


class _Breaks(pe.Editor):
    """Mutates in every way an editor can, then fails."""

    name = "breaks"
    uses_scores = False

    def apply(self, model, scores, inputs):
        with torch.no_grad():
            model.a.weight.zero_()
            model.bn.running_mean.add_(3)
        model.a = nn.Conv2d(3, 4, 3)  # structure
        model.b.weight = nn.Parameter(torch.ones(4, 4))
        model.train()
        raise RuntimeError("midway")


def test_failed_edit_restores_in_place_keeping_identities():
    torch.manual_seed(0)
    model = _Net().eval()
    held_conv, held_w, held_bn = model.a, model.a.weight, model.bn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="midway"):
        pe.edit(model, _Breaks())
    assert model.a is held_conv and model.a.weight is held_w and model.bn is held_bn
    assert not model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    held_conv.weight.data.fill_(7)  # the user's reference is still the model's
    assert float(model.a.weight[0, 0, 0, 0]) == 7


def test_atomic_restores_a_shape_changed_parameter():
    model = _Net()
    w = model.b.weight
    old = w.detach().clone()
    with pytest.raises(ValueError):
        with atomic(model):
            w.data = torch.zeros(2, 2)
            raise ValueError
    assert model.b.weight is w and torch.equal(w, old)


def test_editor_flags_are_checked_before_editing():
    model = _Net()
    with pytest.raises(InputError, match="computes its own scores"):
        pe.edit(model, _Breaks(), pe.Scores({"a": torch.ones(8)}, "l1"))
    with pytest.raises(InputError, match="needs calibration data"):
        pe.edit(model, "modhifi-p")
    with pytest.raises(InputError, match="not a forgetting one"):
        pe.forget(model, 0, (torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])), editor="prune")
