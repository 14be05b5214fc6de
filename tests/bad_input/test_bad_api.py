"""Bad or unusual input through the API and the CLI: a clear pluginedit error naming the problem
(exit status 2 from the CLI) or a correct result, and the model untouched after every failure."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import pluginedit as pe
from pluginedit import cli
from pluginedit.core.errors import EditError, InputError, PluginEditError


def _net(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).eval()


X = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(16) % 4


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        repr(model),
        [m.training for m in model.modules()],
    )


def _same(model, snap) -> bool:
    state, structure, modes = snap
    now = model.state_dict()
    return (
        repr(model) == structure
        and [m.training for m in model.modules()] == modes
        and state.keys() == now.keys()
        and all(torch.equal(state[k], now[k]) for k in state)
    )


@pytest.mark.parametrize(
    "values,match",
    [
        ({"0": torch.ones(9)}, "have 9 entries but the layer has 8"),
        ({"0": torch.ones(3)}, "have 3 entries but the layer has 8"),
        ({"features.0": torch.ones(8)}, "layers the model does not have"),
    ],
)
def test_scores_that_do_not_fit_the_model_are_refused(values, match):
    model = _net()
    snap = _state(model)
    with pytest.raises(InputError, match=match):
        pe.edit(model, "mask", pe.Scores(values, "l1"), ratio=0.5)
    assert _same(model, snap)


def test_plain_dict_and_nan_scores_are_refused():
    model = _net()
    with pytest.raises(InputError, match="must be a pluginedit.Scores"):
        pe.edit(model, "mask", {"0": torch.full((8,), float("nan"))}, ratio=0.5)
    with pytest.raises(InputError, match="NaN or Inf"):
        pe.Scores({"0": torch.full((8,), float("nan"))}, "x")


def test_scores_of_the_model_before_an_edit_are_refused():
    model = _net()
    scores = pe.score(model, "l1", example_inputs=X[:1])
    pe.edit(model, "prune", scores, example_inputs=X[:1], ratio=0.5)
    with pytest.raises(InputError, match="have 8 entries but the layer has 4"):
        pe.edit(model, "prune", scores, example_inputs=X[:1], ratio=0.5)


@pytest.mark.parametrize("cls", [2.7, True, "1", None])
def test_forget_class_must_be_an_integer(cls):
    model = _net()
    with pytest.raises(InputError, match="integer forget_class"):
        pe.forget(model, cls, (X, Y))


def test_model_without_component_layers():
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    with pytest.raises(InputError, match="no conv/linear layers"):
        pe.score(model, "l1", example_inputs=X[:1])


class _DictOut(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.net, self.kind = _net(), kind

    def forward(self, x):
        y = self.net(x)
        return {"logits": y, "aux": y * 0} if self.kind == "dict" else (y, y.sum())


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_outputs_other_than_a_tensor_follow_the_output_rule(kind):
    model = _DictOut(kind)
    for scorer in ("l1", "witness", "fidelity"):
        scores = pe.score(model, scorer, data=(X, Y))
        assert set(scores) == {"net.0"}, scorer  # the head (net.5) found through the output


def test_lock_holding_model_is_restored_after_a_failed_edit():
    model = _net()
    model.lock = threading.Lock()
    snap = _state(model)
    with pytest.raises(PluginEditError):
        pe.edit(model, "mask", pe.Scores({"0": torch.ones(8)}, "l1"), indices={"0": [99]})
    assert _same(model, snap)


def test_weight_norm_layer_is_restored_after_a_failed_edit():
    model = _net()
    model[0] = nn.utils.parametrizations.weight_norm(model[0])
    snap = _state(model)
    with pytest.raises(PluginEditError):
        pe.edit(model, "mask", None, indices={"0": [99]})
    assert _same(model, snap)


def test_undo_with_tied_weights_restores_both_names():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = lin.weight  # tied
    before = lin.weight.detach().clone()
    rec = pe.edit(model, "mask", None, indices={"2": [0, 1]}, with_bn=False)
    assert rec.reversible and torch.equal(lin.weight[:2], torch.zeros(2, 4))
    rec.undo(model)
    assert torch.equal(lin.weight, before) and model[2].weight is lin.weight


def test_undo_on_another_model_changes_nothing():
    model = _net()
    rec = pe.edit(model, "mask", None, indices={"0": [1]})
    other = nn.Sequential(nn.Linear(2, 2))
    snap = _state(other)
    with pytest.raises(EditError, match="cannot undo"):
        rec.undo(other)
    assert _same(other, snap)


@pytest.mark.parametrize(
    "argv",
    [["--calib-samples", "-5"], ["--train-samples", "0"], ["--epochs", "-1"], ["--class", "2.7"]],
)
def test_cli_rejects_nonsense_numbers(argv, capsys):
    cmd = ["forget", "--class", "2"] if argv[0] != "--class" else ["forget"]
    with pytest.raises(SystemExit) as e:
        cli.main(cmd + argv)
    assert e.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_cli_one_class_data_exits_2(tmp_path, capsys):
    f = tmp_path / "one.safetensors"
    save_file({"x": torch.randn(40, 1, 8, 8), "y": torch.zeros(40, dtype=torch.long)}, str(f))
    assert cli.main(["prune", "--data", str(f)]) == 2
    assert "class(es)" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_typo_in_an_editor_option_exits_2(capsys):
    assert cli.main(["prune", "-o", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_scores_out_stems_with_dots_stay_apart(tmp_path):
    a, b = pe.Scores({"0": torch.ones(3)}, "x"), pe.Scores({"0": torch.zeros(3)}, "y")
    a.save(tmp_path / "run.v1")
    b.save(tmp_path / "run.v2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run.v1.json",
        "run.v1.safetensors",
        "run.v2.json",
        "run.v2.safetensors",
    ]
    assert pe.Scores.load(tmp_path / "run.v1").scorer == "x"
    assert json.loads((tmp_path / "run.v2.json").read_text())["scorer"] == "y"
    with pytest.raises(InputError, match="does not exist"):
        pe.Scores.load(tmp_path / "run.v3")


def test_prune_refuses_tied_weights_and_leaves_them_tied():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    model[2].weight = lin.weight
    snap = _state(model)
    x = torch.randn(2, 4)
    with pytest.raises(EditError, match="tied"):
        pe.edit(
            model, "prune", pe.score(model, "l1", example_inputs=x), example_inputs=x, ratio=0.5
        )
    assert _same(model, snap) and model[2].weight is lin.weight


def test_images_the_model_cannot_take_are_refused_up_front():
    model = _net()
    with pytest.raises(
        InputError, match=r"cannot run on the data's inputs of shape \(1, 1, 8, 8\)"
    ):
        pe.score(model, "witness", data=(torch.randn(8, 1, 8, 8), torch.arange(8) % 4))
    with pytest.raises(InputError, match="cannot run on the data"):
        pe.edit(model, "modhifi-p", data=(torch.randn(8, 1, 8, 8), torch.arange(8) % 4))


def test_depthwise_model_keeps_running_after_discedit_sp():
    """Depthwise convs are coupled to their input channels: discedit-sp must leave them (it
    returned Conv2d(1, 0, groups=0) before)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
    import custom_models

    model = custom_models.make(width=8)
    x, y = torch.randn(60, 3, 32, 32), torch.arange(60) % 10
    rec = pe.edit(model, "discedit-sp", data=(x, y), ratio=0.25, max_samples=60)
    assert all("dw" not in p for p in rec.info["layers"])
    assert all(
        m.groups >= 1 and m.out_channels > 0 for m in model.modules() if isinstance(m, nn.Conv2d)
    )
    assert model(x[:2]).shape == (2, 10)


def test_classes_absent_from_the_test_data_report_none():
    from pluginedit.evaluate import accuracy

    acc, per_class = accuracy(_net(), (X[:3], Y[:3]), 4)
    assert per_class[3] is None and all(a is not None for a in per_class[:3])


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.net, self.aux = _net(), nn.Linear(4, 7)

    def forward(self, x):
        y = self.net(x)
        return {"aux": self.aux(y), "cls": y}  # no "logits": the rule would take "aux"


def test_the_output_rule_can_be_overridden_per_model():
    from pluginedit.evaluate import accuracy

    model = _TwoHeads()
    with pytest.raises(InputError, match="labels out of range"):  # 7 outputs read as classes
        pe.score(model, "witness", data=(X, Y + 5))
    model.pluginedit_output = lambda out: out["cls"]
    assert accuracy(model, (X, Y), 4)[0] == accuracy(model.net, (X, Y), 4)[0]
    assert set(pe.score(model, "witness", data=(X, Y))) >= {"net.0"}


@pytest.mark.parametrize("scorer", ["l1", "witness", "fidelity", "taylor", "tvs"])
def test_scoring_that_fails_leaves_a_train_mode_model_as_it_was(scorer):
    model = _net().train()
    snap = _state(model)
    bad = X.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        pe.score(
            model,
            scorer,
            data=(bad, Y),
            targets=["0"] if scorer == "l1" else None,
            num_classes=4 if scorer == "l1" else None,
            max_samples=None,
        ) if scorer != "l1" else pe.score(model, scorer, data=(X, Y), targets=["nope"])
    assert _same(model, snap)
