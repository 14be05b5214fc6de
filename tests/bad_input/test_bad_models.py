"""Bad or unusual models, data and plugins through the API (and the CLI where it has a say): each
case is a clear pluginedit error naming the problem, or a defined result, and the model comes out
of every failure exactly as it went in (bytes, object identities, structure, modes)."""

from __future__ import annotations

import pytest
import torch
from _bad_input_helpers import Untouched, X, Y, tiny
from torch import nn

import pluginedit as pe
from pluginedit import cli
from pluginedit.capture import Split
from pluginedit.core import registry
from pluginedit.core.errors import EditError, InputError, PluginRunError
from pluginedit.scorers.magnitude import L1Scorer

BUILTIN_SCORERS = sorted(n for n, p in registry.plugins("scorer").items() if p.dist == "pluginedit")


def test_the_guard_sees_every_kind_of_change():
    """The byte-identity check used below must be able to fail."""
    for change in (
        lambda m: m[1].running_mean.add_(1e-3),
        lambda m: setattr(m[0], "weight", nn.Parameter(m[0].weight.detach().clone())),
        lambda m: m.train(),
    ):
        model = tiny()
        guard = Untouched(model)
        with torch.no_grad():
            change(model)
        assert guard.problems()


# -- data of the wrong shape, dtype, range or size ---------------------------------------------


@pytest.mark.parametrize(
    "x,y,match",
    [
        (
            X.half(),
            Y,
            r"cannot run on the data's inputs of shape \(1, 3, 8, 8\).*Half",
        ),  # float64 is converted
        (X.to(torch.uint8), Y, r"cannot run on the data's inputs.*unsigned char"),
        (X[:, :1], Y, r"cannot run on the data's inputs of shape \(1, 1, 8, 8\)"),
        (X, Y.float(), "labels must be integers"),
        (X, Y[:, None], r"labels must have shape \(16,\)"),
        (X, Y[:15], "16 inputs but 15 labels"),
    ],
    ids=["float16-x", "uint8-x", "one-channel-x", "float-y", "2d-y", "count-mismatch"],
)
def test_wrong_shapes_and_dtypes_are_named(x, y, match):
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(InputError, match=match):
        pe.score(model, "witness", data=(x, y))
    guard.check()


@pytest.mark.parametrize("call", ["witness", "taylor", "forget", "discedit-sp"])
@pytest.mark.parametrize(
    "shift,found", [(1, r"\[1, 4\]"), (-1, r"\[-1, 2\]")], ids=["above", "below"]
)
def test_labels_out_of_range_are_refused(call, shift, found):
    model = tiny()
    guard = Untouched(model)
    data = (X, Y + shift)
    with pytest.raises(InputError, match=rf"labels out of range: found {found}, expected \[0, 3\]"):
        if call == "forget":
            pe.forget(model, 1, data)
        elif call == "discedit-sp":
            pe.edit(model, call, data=data, ratio=0.5)
        else:
            pe.score(model, call, data=data)
    guard.check()


@pytest.mark.parametrize("call", ["score", "score-with-example", "edit", "forget"])
@pytest.mark.parametrize("kind", ["pair", "split"])
def test_empty_data_is_refused(call, kind):
    """It raised a bare StopIteration (or scored nothing) before."""
    model = tiny()
    guard = Untouched(model)
    empty = (X[:0], Y[:0]) if kind == "pair" else Split(X[:0], Y[:0])
    with pytest.raises(InputError, match="the data is empty"):
        if call.startswith("score"):
            pe.score(
                model,
                "witness",
                data=empty,
                example_inputs=X[:1] if call.endswith("example") else None,
            )
        elif call == "edit":
            pe.edit(model, "modhifi-p", data=empty, ratio=0.5)
        else:
            pe.forget(model, 1, empty)
    guard.check()


@pytest.mark.parametrize("call", ["witness", "taylor", "tvs", "forget"])
@pytest.mark.parametrize("kind", ["pair", "split"])
def test_single_class_data_is_refused(call, kind):
    """Class statistics of one class are undefined; taylor on an (x, y) pair and forget used to
    run on it or fail with a message about the wrong class."""
    model = tiny()
    guard = Untouched(model)
    one = (X, torch.zeros_like(Y)) if kind == "pair" else Split(X, torch.zeros_like(Y))
    with pytest.raises(InputError, match=r"the data has 1 class\(es\); this needs at least 2"):
        pe.forget(model, 0, one) if call == "forget" else pe.score(model, call, data=one)
    guard.check()


# -- activations: NaN / Inf, zero variance ------------------------------------------------------


class _Blowup(nn.Module):
    def forward(self, x):
        return x * 1e30


def _overflowing() -> nn.Module:
    """Finite weights and inputs, but the activations overflow to Inf after the first conv."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        _Blowup(),
        _Blowup(),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


@pytest.mark.parametrize(
    "call,match",
    [
        ("witness", "NaN or Inf in activations"),
        ("tvs", "NaN or Inf in activations"),
        ("fidelity", "NaN or Inf in layer inputs"),
        ("coar", "NaN or Inf in the masked outputs"),
        ("taylor", "scores of '0' from scorer 'taylor' contain NaN or Inf"),
        ("modhifi-p", "NaN or Inf in layer inputs"),
        ("discedit-sp", "NaN or Inf in activations"),
        ("forget", "NaN or Inf in activations"),
    ],
)
def test_nan_or_inf_activations_are_named(call, match):
    model = _overflowing()
    guard = Untouched(model)
    with pytest.raises(InputError, match=match):
        if call == "forget":
            pe.forget(model, 1, (X, Y))
        elif call in ("modhifi-p", "discedit-sp"):
            pe.edit(model, call, data=(X, Y), ratio=0.5)
        else:
            pe.score(model, call, data=(X, Y))
    guard.check()


def _constant_channels() -> nn.Module:
    """Channels 1 and 5 of the first conv emit a constant (zero weights, a bias): zero variance
    after the conv and after the BN."""
    model = tiny()
    with torch.no_grad():
        model[0].weight[[1, 5]] = 0
        model[0].bias[[1, 5]] = 0.3
    return model


@pytest.mark.parametrize("scorer", BUILTIN_SCORERS)
def test_zero_variance_channels_get_finite_scores(scorer):
    model = _constant_channels()
    guard = Untouched(model)
    s = pe.score(model, scorer, data=(X, Y))["0"]
    assert s.shape == (8,) and torch.isfinite(s).all()
    if scorer not in ("random", "bn-gamma", "taylor"):  # these do not read the activations' spread
        assert set(torch.argsort(s)[:2].tolist()) == {1, 5}, s  # a constant channel carries nothing
    guard.check()


@pytest.mark.parametrize("scorer", ["witness", "tvs", "fidelity"])
def test_constant_inputs_score_every_channel_zero(scorer):
    """Every channel constant: the centred fidelity share was round-off over round-off (+-1e11)."""
    s = pe.score(tiny(), scorer, data=(torch.full_like(X, 0.5), Y))["0"]
    assert torch.isfinite(s).all() and s.abs().max() <= 1e-6, s


@pytest.mark.parametrize("editor", ["modhifi-p", "discedit-sp"])
def test_zero_variance_channels_are_pruned_first_with_finite_weights(editor):
    model = _constant_channels()
    rec = pe.edit(model, editor, data=(X, Y), ratio=0.5)
    assert {1, 5} <= set(rec.changes["0"])
    assert all(
        torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()
    )
    assert torch.isfinite(model(X)).all()


# -- models the editors cannot edit ----------------------------------------------------------


@pytest.mark.parametrize("editor", ["prune", "mask", "modhifi-p", "discedit-sp", "forget"])
def test_model_without_component_layers_cannot_be_edited(editor):
    model = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.BatchNorm1d(192)).eval()
    guard = Untouched(model)
    with pytest.raises(
        InputError, match=r"the model \(Sequential\) has no conv/linear layers to edit"
    ):
        if editor == "forget":
            pe.forget(model, 1, (X, Y))
        else:
            pe.edit(
                model,
                editor,
                pe.Scores({}, "l1") if editor in ("prune", "mask") else None,
                data=(X, Y),
                ratio=0.5,
            )
    guard.check()


def test_head_only_model_has_nothing_to_prune():
    """Only the classifier head: it said "torch-pruning removed no channel ... untraceable ops"."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4)).eval()
    guard = Untouched(model)
    with pytest.raises(InputError, match=r"nothing to prune.*classifier head.*kept: \['1'\]"):
        pe.prune(model, "l1", 0.5, example_inputs=X[:1])
    guard.check()


class _NumpyDetour(nn.Module):
    """Leaves torch through numpy: torch-pruning's graph never sees the conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.from_numpy(self.bn(self.conv(x)).mean((2, 3)).detach().numpy()))


@pytest.mark.parametrize("call", ["prune", "modhifi-p", "discedit-sp", "fidelity", "taylor"])
def test_untraceable_model_is_named_and_untouched(call):
    """modhifi-p, discedit-sp, fidelity and taylor let torch-pruning's ValueError ("Module ... is
    not in the dependency graph") escape before."""
    model = _NumpyDetour().eval()
    guard = Untouched(model)
    with pytest.raises(EditError, match="torch-pruning"):
        if call == "prune":
            pe.edit(
                model,
                "prune",
                pe.Scores({"conv": torch.rand(8)}, "l1"),
                example_inputs=X[:1],
                ratio=0.5,
            )
        elif call in ("modhifi-p", "discedit-sp"):
            pe.edit(model, call, data=(X, Y), ratio=0.5)
        else:
            pe.score(model, call, data=(X, Y))
    guard.check()


def test_untraceable_model_can_still_be_masked_and_undone():
    model = _NumpyDetour().eval()
    guard = Untouched(model)
    rec = pe.edit(model, "mask", pe.score(model, "l1", example_inputs=X[:1]), ratio=0.5)
    assert len(rec.changes["conv"]) == 4 and model.conv.weight[rec.changes["conv"]].abs().sum() == 0
    rec.undo(model)
    guard.check()


class _Grouped(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.g, self.fc = nn.Conv2d(8, 8, 3, padding=1, groups=groups), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.g(torch.relu(self.bn(self.a(x))))).mean((2, 3)))


@pytest.mark.parametrize("groups", [2, 8], ids=["grouped", "depthwise"])
def test_grouped_and_depthwise_convs_prune_consistently(groups):
    model = _Grouped(groups).eval()
    pe.prune(model, "l1", 0.5, data=(X, Y))
    assert (
        model.a.out_channels == model.g.in_channels == 4
        and model.g.out_channels == model.fc.in_features == 4
    )
    assert model.g.groups == min(groups, 4) and model.g.weight.shape == (
        4,
        4 // model.g.groups,
        3,
        3,
    )
    assert model(X).shape == (16, 4)


def test_discedit_sp_leaves_layers_coupled_to_a_grouped_conv():
    """Removing arbitrary input channels of a groups=2 conv broke it ("INDICES element is out of
    DATA bounds" from inside torch)."""
    model = _Grouped(2).eval()
    rec = pe.edit(model, "discedit-sp", data=(X, Y), ratio=0.5)
    assert "a" not in rec.info["layers"] and "g" not in rec.info["layers"]
    assert model.g.weight.shape == (8, 4, 3, 3) and model(X).shape == (16, 4)


def test_fidelity_scores_through_a_grouped_consumer():
    """A grouped conv's inputs are scored against the outputs of their group (they were
    refused) and delta* refits it group by group."""
    model = _Grouped(2).eval()
    rec = pe.edit(model, "modhifi-p", data=(X, Y), ratio=0.5)
    assert model.a.out_channels == model.g.in_channels == 4 and model(X).shape == (16, 4)
    assert rec.info["compensation_modes"]["exact"] >= 2 and not rec.info["uncompensated"]


def _tied() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(192, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()
    model[5].weight = model[3].weight
    return model


@pytest.mark.parametrize("editor", ["modhifi-p", "discedit-sp"])
def test_tied_weights_are_refused_by_physical_editors_and_stay_tied(editor):
    model = _tied()
    guard = Untouched(model)
    with pytest.raises(EditError, match=r"'3.weight' and '5.weight' are tied"):
        pe.edit(model, editor, data=(X, Y), ratio=0.5)
    guard.check()
    assert model[5].weight is model[3].weight


# -- half precision ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scorer", ["l1", "witness", "fidelity", "taylor"])
def test_half_precision_models_score_read_only(dtype, scorer):
    model = tiny().to(dtype)
    guard = Untouched(model)
    s = pe.score(model, scorer, data=(X.to(dtype), Y))["0"]
    assert (
        s.dtype == torch.float32
        and s.shape == (8,)
        and torch.isfinite(s).all()
        and s.abs().max() > 0
    )
    guard.check()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_prune_and_keep_their_dtype(dtype):
    model = tiny().to(dtype)
    pe.edit(model, "modhifi-p", data=(X.to(dtype), Y), ratio=0.5)
    assert model[0].out_channels == 4 and {p.dtype for p in model.parameters()} == {dtype}
    out = model(X.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_with_float32_data_or_a_bad_edit_is_untouched(dtype):
    model = tiny().to(dtype)
    guard = Untouched(model)
    with pytest.raises(InputError, match=r"cannot run on the data's inputs .*Input type \(float\)"):
        pe.score(model, "witness", data=(X, Y))
    with pytest.raises(InputError, match="component index out of range"):
        pe.edit(model, "mask", indices={"0": [1, 99]})
    guard.check()


# -- models whose forward returns a tuple or a dict --------------------------------------------


class _Structured(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.net, self.kind = tiny(), kind

    def forward(self, x):
        y = self.net(x)
        return {"logits": y, "aux": y.sum(1)} if self.kind == "dict" else (y, y.sum(1))


@pytest.mark.parametrize("kind", ["dict", "tuple"])
@pytest.mark.parametrize("editor", ["prune", "modhifi-p", "forget"])
def test_structured_outputs_edit_and_keep_their_structure(kind, editor):
    model = _Structured(kind).eval()
    if editor == "forget":
        rec = pe.forget(model, 1, (X, Y))
        assert rec.changes
    elif editor == "prune":
        pe.prune(model, "l1", 0.5, data=(X, Y))
    else:
        pe.edit(model, editor, data=(X, Y), ratio=0.5)
    out = model(X)
    logits = out["logits"] if kind == "dict" else out[0]
    assert type(out) is (dict if kind == "dict" else tuple) and logits.shape == (16, 4)
    assert model.net[5].out_features == 4  # the head found through the structured output


# -- ratios, plugin names and options ------------------------------------------------------------


@pytest.mark.parametrize("editor", ["prune", "mask", "modhifi-p"])
@pytest.mark.parametrize(
    "ratio,match",
    [
        (float("nan"), r"ratio must lie in \(0, 1\), got nan"),
        (float("inf"), r"got inf"),
        (-0.25, r"got -0.25"),
        (1.0, r"got 1.0"),
        ("0.5", "option 'ratio' of .* must be float, got '0.5'"),
        (None, "must be float, got None"),
    ],
    ids=["nan", "inf", "negative", "one", "string", "none"],
)
def test_ratio_out_of_range_or_nan_is_refused(editor, ratio, match):
    model = tiny()
    guard = Untouched(model)
    scores = pe.score(model, "l1", example_inputs=X[:1]) if editor != "modhifi-p" else None
    with pytest.raises(InputError, match=match):
        pe.edit(model, editor, scores, data=(X, Y), example_inputs=X[:1], ratio=ratio)
    guard.check()


@pytest.mark.slow
def test_cli_ratio_nan_exits_2(capsys):
    assert cli.main(["prune", "--ratio", "nan", "--calib-samples", "64"]) == 2
    assert "ratio must lie in (0, 1), got nan" in capsys.readouterr().err


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m: pe.score(m, "magic"), "unknown scorer 'magic'; known: .*l1"),
        (lambda m: pe.edit(m, "magic"), "unknown editor 'magic'; known: .*prune"),
        (
            lambda m: pe.score(m, "witness", data=(X, Y), gama=2.0),
            r"unknown option\(s\) \['gama'\] for 'witness'; known: .*'gamma'",
        ),
        (
            lambda m: pe.edit(m, "mask", indices={"0": [1]}, with_nb=False),
            r"unknown option\(s\) \['with_nb'\]",
        ),
        (
            lambda m: pe.score(m, "witness", data=(X, Y), method="magic"),
            "option 'method' of 'witness' must be one of",
        ),
    ],
    ids=["scorer", "editor", "scorer-option", "editor-option", "option-choice"],
)
def test_unknown_plugin_names_and_options_are_named(call, match):
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(InputError, match=match):
        call(model)
    guard.check()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["score", "--scorer", "magic"], "unknown scorer 'magic'"),
        (["prune", "--editor", "magic"], "unknown editor 'magic'"),
        (["plugins", "--describe", "magic"], "unknown plugin 'magic'"),
        (["score", "-o", "bogus=1"], r"unknown option(s) ['bogus'] for 'l1'"),
    ],
    ids=["scorer", "editor", "describe", "option"],
)
@pytest.mark.slow
def test_cli_unknown_plugin_names_and_options_exit_2(argv, match, capsys):
    assert cli.main(argv + (["--calib-samples", "64"] if argv[0] != "plugins" else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("pluginedit: error: ") and match in err and "Traceback" not in err


# -- plugins that misbehave ------------------------------------------------------------------------


class _Raises(pe.Scorer):
    name = "raises"

    def score(self, model, stats, inputs):
        raise ValueError("kaput")


class _RequestsRaise(pe.Scorer):
    name = "requests-raise"

    def requests(self, model, inputs):
        raise KeyError("no such statistic")


def _returning(name, fn):
    return type(
        name, (pe.Scorer,), {"name": name, "score": lambda self, model, stats, inputs: fn(inputs)}
    )


@pytest.mark.parametrize(
    "scorer,error,match",
    [
        (_Raises, PluginRunError, "scorer 'raises' failed: ValueError: kaput"),
        (
            _RequestsRaise,
            PluginRunError,
            "scorer 'requests-raise' failed: KeyError: 'no such statistic'",
        ),
        (
            _returning("nan", lambda i: {"0": torch.full((8,), float("nan"))}),
            InputError,
            "scores of '0' from scorer 'nan' contain NaN or Inf",
        ),
        (
            _returning("short", lambda i: {"0": torch.ones(3)}),
            PluginRunError,
            "scorer 'short' returned scores that do not fit the model: .*have 3 entries but the layer has 8",
        ),
        (
            _returning("foreign", lambda i: {"features.0": torch.ones(8)}),
            PluginRunError,
            r"scorer 'foreign' returned scores .*name layers the model does not have: \['features.0'\]",
        ),
        (
            _returning("listy", lambda i: [torch.ones(8)]),
            PluginRunError,
            "scorer 'listy' returned list, not a dict",
        ),
    ],
    ids=["raises", "requests-raise", "nan", "wrong-length", "unknown-layer", "not-a-dict"],
)
def test_misbehaving_scorer_is_named(scorer, error, match):
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(error, match=match):
        pe.score(model, scorer(), data=(X, Y))
    guard.check()


class _EditorRaises(pe.Editor):
    name = "raises"
    uses_scores = False

    def apply(self, model, scores, inputs):
        with torch.no_grad():
            model[0].weight.zero_()
        model[5] = nn.Linear(8, 4)
        raise ZeroDivisionError("oops")


class _EditorNaN(pe.Editor):
    name = "writes-nan"
    uses_scores = False

    def apply(self, model, scores, inputs):
        with torch.no_grad():
            model[0].weight[0, 0, 0, 0] = float("nan")
        return self.record("nan")


class _EditorNoRecord(pe.Editor):
    name = "no-record"
    uses_scores = False

    def apply(self, model, scores, inputs):
        with torch.no_grad():
            model[1].running_var.mul_(2)
        return {"changed": True}


@pytest.mark.parametrize(
    "editor,match",
    [
        (_EditorRaises, "editor 'raises' failed: ZeroDivisionError: oops"),
        (
            _EditorNaN,
            r"editor 'writes-nan' left NaN or Inf in \['0.weight'\]; the model was restored",
        ),
        (_EditorNoRecord, "editor 'no-record' returned dict, not an EditRecord"),
    ],
    ids=["raises", "writes-nan", "no-record"],
)
def test_misbehaving_editor_is_named_and_rolled_back(editor, match):
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(PluginRunError, match=match):
        pe.edit(model, editor(), example_inputs=X[:1])
    guard.check()


@pytest.mark.slow
def test_cli_scorer_that_raises_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(L1Scorer, "score", lambda self, model, stats, inputs: 1 / 0)
    assert cli.main(["score", "--calib-samples", "64"]) == 2
    err = capsys.readouterr().err
    assert (
        "pluginedit: error: scorer 'l1' failed: ZeroDivisionError" in err and "Traceback" not in err
    )
