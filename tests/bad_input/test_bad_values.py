"""Issue 22, data and options: labels, data files, dtypes, argument and option ranges, each a
clear pluginedit error naming the problem before any heavy work (the model untouched), or a
correct result where converting is the right answer (float64 inputs for a float32 model)."""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
import pytest
import torch
from _bad_input_helpers import Untouched, X, Y, tiny
from safetensors.torch import save_file
from torch import nn

import pluginedit as pe
from pluginedit import api, cli
from pluginedit.capture import Split, as_loader
from pluginedit.contrib import data, train
from pluginedit.core import registry
from pluginedit.core.checks import MAX_CLASSES
from pluginedit.core.errors import InputError
from pluginedit.io.models import load_state, load_weights

TINY = {"widths": (4,), "hidden": 8}
XS = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)


def _npz(tmp_path, **arrays) -> str:
    f = tmp_path / "d.npz"
    np.savez(f, **arrays)
    return str(f)


# -- 1. labels that are not class indices ---------------------------------------------------------


@pytest.mark.parametrize(
    "y,match",
    [
        (
            np.array([2**40] + [0] * 39),
            r"labels go up to 1099511627776: more than the 100,000 classes",
        ),
        (np.array([1e30] + [0.0] * 39), r"labels go up to \d+: more than the 100,000 classes"),
        (np.arange(40) - 1, r"labels must be >= 0, found -1"),
        (
            (np.arange(40) % 3).astype(np.complex64),
            r"labels must be a 1-D integer array .*complex64",
        ),
        (np.arange(40) / 3, r"not whole numbers \(e.g. 0.333"),
        (np.array([np.nan] + [0.0] * 39), r"not whole numbers \(e.g. nan\)"),
        (np.arange(40) % 2 == 0, r"labels must be a 1-D integer array .*bool"),
    ],
    ids=["2**40", "1e30", "negative", "complex", "fractional", "nan", "bool"],
)
def test_labels_that_are_not_class_indices_are_refused_before_sizing_anything(tmp_path, y, match):
    with pytest.raises(InputError, match=match) as e:  # 2**40 used to build 2**40 class names
        data.load_dataset(_npz(tmp_path, x=XS, y=y))
    assert "d.npz: x/y labels" in str(e.value)


def test_whole_number_float_labels_are_taken_exactly(tmp_path):
    bundle = data.load_dataset(_npz(tmp_path, x=XS, y=(np.arange(40) % 3).astype(np.float64)))
    assert bundle.num_classes == 3 and bundle.train.y.dtype == torch.int64
    assert set(bundle.train.y.tolist()) | set(bundle.test.y.tolist()) == {0, 1, 2}


def test_labels_just_under_the_class_bound_still_load(tmp_path):
    bundle = data.load_dataset(_npz(tmp_path, x=XS, y=np.array([MAX_CLASSES - 1] + [0] * 39)))
    assert bundle.num_classes == MAX_CLASSES and len(bundle.class_names) == MAX_CLASSES


@pytest.mark.parametrize("y", [Y.bool(), Y.to(torch.complex64)], ids=["bool", "complex"])
def test_bool_or_complex_labels_through_the_api_are_named(y):
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(
        InputError, match=f"labels must be integers \\(class indices\\), got dtype {y.dtype}"
    ):
        pe.score(model, "witness", data=(X, y))
    guard.check()


# -- 2. half a test split ---------------------------------------------------------------------------


@pytest.mark.parametrize("given,absent", [("x_test", "y_test"), ("y_test", "x_test")])
def test_half_a_test_split_is_refused_not_ignored(tmp_path, given, absent):
    extra = {"x_test": XS[:5]} if given == "x_test" else {"y_test": np.arange(5) % 3}
    with pytest.raises(
        InputError, match=f"{given} without {absent}; give both test arrays, or neither"
    ):
        data.load_dataset(_npz(tmp_path, x=XS, y=np.arange(40) % 3, **extra))


def test_both_test_arrays_are_used(tmp_path):
    bundle = data.load_dataset(
        _npz(tmp_path, x=XS, y=np.arange(40) % 3, x_test=XS[:5], y_test=np.arange(5) % 3)
    )
    assert len(bundle.train) == 40 and len(bundle.test) == 5


# -- 3. labels beyond the model's output ------------------------------------------------------------


@pytest.mark.parametrize("scorer", ["l1", "fidelity", "witness"])
def test_labels_beyond_the_output_width_are_refused_by_every_scorer(scorer):
    """Whether or not the scorer reads labels: a label the model has no output for is a mistake."""
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(
        InputError,
        match=r"labels out of range: found \[10, 13\], expected \[0, 3\] "
        r"\(the model's output width is 4\)",
    ):
        pe.score(model, scorer, data=(X, Y + 10))
    guard.check()


def test_labels_beyond_num_classes_given_name_it():
    model = tiny()
    with pytest.raises(InputError, match=r"found \[0, 7\], expected \[0, 5\] \(num_classes is 6\)"):
        pe.score(model, "fidelity", data=(X, Y * 2 + 1 - (Y == 0).long()), num_classes=6)


def test_labels_beyond_the_output_width_are_refused_by_an_editor():
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(InputError, match=r"labels out of range.*\(the model's output width is 4\)"):
        pe.edit(model, "modhifi-p", data=(X, Y + 1), ratio=0.5)
    guard.check()


# -- 4. a directory where a file belongs ------------------------------------------------------------


def test_a_directory_as_data_or_weights_file_is_called_a_directory(tmp_path):
    folder = tmp_path / "data.npz"
    folder.mkdir()
    with pytest.raises(
        InputError, match=r"data file .*data.npz is a directory, not a .safetensors / .npz file"
    ):
        data.load_dataset(str(folder))
    with pytest.raises(InputError, match=r"weights file .*data.npz is a directory"):
        load_weights(folder)


# -- 5. inputs without a feature dimension ----------------------------------------------------------


def test_one_dimensional_inputs_ask_for_a_feature_dimension(tmp_path):
    with pytest.raises(
        InputError,
        match=r"inputs of shape \(40,\) have no feature dimension: inputs need "
        r"a sample dimension plus feature dimensions",
    ):
        data.load_dataset(_npz(tmp_path, x=XS[:, 0, 0, 0], y=np.arange(40) % 3))
    model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 3))
    guard = Untouched(model)
    with pytest.raises(InputError, match=r"inputs of shape \(16,\) have no feature dimension"):
        pe.score(model, "fidelity", data=(X[:, 0, 0, 0], Y % 3))
    guard.check()


# -- 6. empty data folders --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["empty", "empty-class-folders"])
def test_an_empty_data_folder_is_named(tmp_path, layout):
    pytest.importorskip("datasets")
    folder = tmp_path / "images"
    folder.mkdir()
    if layout == "empty-class-folders":
        (folder / "cat").mkdir(), (folder / "dog").mkdir()
    with pytest.raises(
        InputError,
        match=r"data set folder .*images is empty: expected a `save_to_disk` "
        r"folder or an image folder",
    ):
        data.load_dataset(str(folder))


def test_a_folder_of_no_data_files_is_a_clear_error(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "docs" / "a").mkdir(parents=True)
    (tmp_path / "docs" / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"docs: not a data set `datasets` can read"):
        data.load_dataset(str(tmp_path / "docs"))


# -- 7. float64 inputs for a float32 model ----------------------------------------------------------


def test_float64_inputs_are_converted_for_a_float32_model():
    model = tiny()
    guard = Untouched(model)
    x64 = X.double()
    got = pe.score(model, "fidelity", data=(x64, Y))
    want = pe.score(model, "fidelity", data=(X, Y))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert x64.dtype == torch.float64  # the caller's tensor is not converted in place
    guard.check()
    pe.edit(model, "modhifi-p", data=Split(x64, Y), ratio=0.5)
    assert model[0].out_channels == 4 and model(X).dtype == torch.float32


@pytest.mark.slow
def test_float64_data_file_trains_and_scores_a_zoo_model(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGINEDIT_CACHE", str(tmp_path / "cache"))
    x = np.random.default_rng(1).standard_normal((60, 1, 8, 8))  # float64, NumPy's default
    bundle = data.load_dataset(_npz(tmp_path, x=x, y=np.arange(60) % 3))
    assert bundle.train.x.dtype == torch.float32
    model = train.pretrained("vgg", bundle, epochs=1, config=TINY)
    assert set(pe.score(model, "witness", data=bundle.train)) and model(bundle.test.x).shape[1] == 3


@pytest.mark.slow
def test_cli_scores_a_zoo_model_on_a_float64_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLUGINEDIT_CACHE", str(tmp_path / "cache"))
    f = _npz(
        tmp_path, x=np.random.default_rng(1).standard_normal((60, 1, 8, 8)), y=np.arange(60) % 3
    )
    out = tmp_path / "s"
    assert (
        cli.main(
            [
                "score",
                "--arch",
                "vgg",
                "--data",
                f,
                "--scorer",
                "l1",
                "--epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert pe.Scores.load(out).scorer == "l1"


# -- 8. complex inputs, integer inputs --------------------------------------------------------------


def test_complex_inputs_are_refused_up_front(tmp_path):
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(InputError, match=r"the inputs are complex-valued \(torch.complex64\)"):
        pe.score(model, "fidelity", data=(X.to(torch.complex64), Y))
    with pytest.raises(InputError, match=r"the inputs are complex-valued"):
        pe.edit(model, "modhifi-p", data=(X.to(torch.complex64), Y), ratio=0.5)
    guard.check()
    with pytest.raises(InputError, match=r"x/y inputs are complex-valued \(torch.complex64\)"):
        data.load_dataset(_npz(tmp_path, x=XS.astype(np.complex64), y=np.arange(40) % 3))


def test_integer_inputs_for_a_float_model_say_to_convert_them():
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(
        InputError,
        match=r"cannot run on the data's inputs.*the inputs are torch.int64 and "
        r"the model computes in torch.float32: convert them",
    ):
        pe.score(model, "fidelity", data=((X * 10).long(), Y))
    guard.check()


# -- 9. a model without data ------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["score", "score-with-data", "edit"])
def test_a_meta_device_model_is_named(call):
    model = tiny().to("meta")
    structure = repr(model)
    with pytest.raises(
        InputError,
        match=r"the model's parameters are on the meta device \(no data; "
        r"'0.weight' among 9\): load weights first",
    ):
        if call == "score":
            pe.score(model, "l1", num_classes=4)
        elif call == "score-with-data":
            pe.score(model, "fidelity", data=(X, Y))
        else:
            pe.edit(model, "mask", pe.Scores({"0": torch.ones(8)}, "l1"))
    assert repr(model) == structure and all(p.is_meta for p in model.parameters())


# -- 10. sizes, counts and seeds --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"batch_size": -3}, "batch_size must be >= 1, got -3"),
        ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
        ({"max_samples": -5}, "max_samples must be >= 1, got -5"),
        ({"max_samples": 0}, "max_samples must be >= 1, got 0"),
        ({"num_classes": -1}, "num_classes must be >= 2, got -1"),
        ({"num_classes": 0}, "num_classes must be >= 2, got 0"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"num_classes": True}, "num_classes must be an integer, got True"),
    ],
)
def test_nonsense_sizes_and_counts_are_named(kw, match):
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(InputError, match=match):
        pe.score(model, "witness", data=(X, Y), **kw)
    guard.check()


def test_num_classes_for_a_forgetting_editor_is_checked():
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(InputError, match="num_classes must be >= 2, got 1"):
        pe.forget(model, 0, (X, Y), num_classes=1)
    guard.check()


SEED = r"seed must lie in \[0, 18446744073709551615\], got 1180591620717411303424"


@pytest.mark.parametrize(
    "call",
    [
        lambda: pe.score(tiny(), "random", seed=2**70, num_classes=4),
        lambda: pe.score(tiny(), "coar", data=(X, Y), seed=2**70),
        lambda: pe.edit(tiny(), "coar-forget", data=(X, Y), forget_class=1, seed=2**70),
        lambda: as_loader((X, Y), seed=2**70),
        lambda: Split(X, Y).subset(4, seed=2**70),
        lambda: train.fit(tiny(), Split(X, Y), 1, seed=2**70),
    ],
    ids=["random", "coar", "coar-forget", "as_loader", "subset", "fit"],
)
@pytest.mark.slow
def test_seeds_beyond_64_bits_are_named(call):
    with pytest.raises(InputError, match=SEED):
        call()


@pytest.mark.slow
def test_seeds_of_data_loading_and_training_are_checked(tmp_path):
    with pytest.raises(InputError, match=r"seed must lie in \[0, 4294967295\]"):
        data.load_digits(seed=2**40)  # scikit-learn takes 32-bit seeds
    with pytest.raises(InputError, match=SEED):
        from pluginedit.contrib import files

        files.load_tensor_file(_npz(tmp_path, x=XS, y=np.arange(40) % 3), seed=2**70)
    with pytest.raises(InputError, match=SEED):
        train.pretrained(
            "vgg", data.load_dataset(_npz(tmp_path, x=XS, y=np.arange(40) % 3)), seed=2**70
        )


# -- 11. zero-width layers --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("call", ["l1", "fidelity", "prune"])
def test_a_zero_width_layer_is_named(call):
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 0), nn.ReLU(), nn.Linear(0, 4)
    )
    guard = Untouched(model)
    with pytest.raises(
        InputError,
        match=r"zero-width layer\(s\) '3' \(Linear\(in_features=64, "
        r"out_features=0.*'5' \(Linear\(in_features=0",
    ):
        if call == "prune":
            pe.edit(model, "prune", pe.Scores({"1": torch.ones(64)}, "l1"), example_inputs=X[:1])
        else:
            pe.score(model, call, data=(X, Y))
    guard.check()


# -- 12. plugin options -----------------------------------------------------------------------------


def _builtin_options():
    for kind in ("scorer", "editor"):
        for name, info in registry.plugins(kind).items():
            if info.dist == "pluginedit" and info.obj is not None:
                hints = typing.get_type_hints(info.obj.Options)
                for f in dataclasses.fields(info.obj.Options):
                    yield kind, name, f, hints[f.name]


def _make(kind, name, **options):
    return (registry.get_scorer if kind == "scorer" else registry.get_editor)(name, **options)


def _accepts(hint, t) -> bool:
    return hint is t or t in typing.get_args(hint)


FLOATS = [(k, n, f.name) for k, n, f, h in _builtin_options() if _accepts(h, float)]
BOUNDED = [
    (k, n, f.name, f.metadata["bounds"], _accepts(h, int))
    for k, n, f, h in _builtin_options()
    if f.metadata.get("bounds")
]
LISTS = [
    (k, n, f.name)
    for k, n, f, h in _builtin_options()
    if typing.get_origin(h) is list
    or any(typing.get_origin(a) is list or a is list for a in typing.get_args(h))
]


def test_the_option_tables_cover_the_plugins():
    assert len(FLOATS) > 20 and len(BOUNDED) > 50 and len(LISTS) >= 8


@pytest.mark.parametrize("kind,name,field", FLOATS, ids=[f"{n}.{f}" for _, n, f in FLOATS])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_every_float_option_refuses_nan_and_inf(kind, name, field, value):
    with pytest.raises(
        InputError, match=rf"option '{field}' of '{name}': {field} must .*got {value}"
    ):
        _make(kind, name, **{field: value})


def _outside(bounds: dict, integer: bool) -> list:
    step = 1 if integer else 1e-9
    out = []
    if "above" in bounds:
        out.append(bounds["above"])
    if "at_least" in bounds:
        out.append(bounds["at_least"] - step)
    if "below" in bounds:
        out.append(bounds["below"])
    if "at_most" in bounds:
        out.append(bounds["at_most"] + step)
    return out


@pytest.mark.parametrize(
    "kind,name,field,bounds,integer", BOUNDED, ids=[f"{b[1]}.{b[2]}" for b in BOUNDED]
)
def test_every_bounded_option_refuses_values_outside_its_range(kind, name, field, bounds, integer):
    for value in _outside(bounds, integer):
        value = int(value) if integer and float(value).is_integer() else value
        with pytest.raises(
            InputError, match=rf"option '{field}' of '{name}': {field} must (lie in|be [<>])"
        ):
            _make(kind, name, **{field: value})


@pytest.mark.parametrize("kind,name,field", LISTS, ids=[f"{n}.{f}" for _, n, f in LISTS])
def test_a_bare_string_for_a_list_option_is_refused_not_split(kind, name, field):
    with pytest.raises(
        InputError, match=rf"option '{field}' of '{name}' must be a list \(e.g. .*\), got '0'"
    ):
        _make(kind, name, **{field: "0"})


def test_list_options_check_their_elements_and_take_tuples():
    with pytest.raises(
        InputError, match=r"option 'layers\[1\]' of 'discedit-u' must be str, got 3"
    ):
        registry.get_editor("discedit-u", layers=["0", 3])
    with pytest.raises(
        InputError, match=r"option 'target' of 'coar-edit' must be a list \(e.g. \[3, 17\]\)"
    ):
        registry.get_editor("coar-edit", target="3")
    assert registry.get_editor("prune", ignored=("0",)).options.ignored == ["0"]


def test_a_string_layer_option_no_longer_edits_single_character_layers():
    """layers="0" was split into ['0'], which is a layer of this model: the edit ran on it."""
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(InputError, match=r"option 'layers' of 'discedit-u' must be a list"):
        pe.edit(model, "discedit-u", data=(X, Y), forget_class=1, layers="0")
    guard.check()


def test_round_to_zero_is_refused():
    with pytest.raises(
        InputError, match=r"option 'round_to' of 'prune': round_to must be >= 1, got 0"
    ):
        pe.edit(
            tiny(), "prune", pe.Scores({"0": torch.ones(8)}, "l1"), example_inputs=X[:1], round_to=0
        )


@pytest.mark.parametrize("editor", ["prune", "modhifi-p"])
@pytest.mark.parametrize("ratio", [0.9, 0.99999])
def test_a_ratio_that_leaves_no_channel_is_named_not_blamed_on_tracing(editor, ratio):
    model = tiny()
    guard = Untouched(model)
    scores = pe.Scores({"0": torch.arange(8.0)}, "l1") if editor == "prune" else None
    with pytest.raises(
        InputError,
        match=rf"ratio {ratio} leaves no channel in any layer to prune \('0' "
        r"\(8 channels\)\).*at most 1 - 1/n \(0.875",
    ):
        pe.edit(model, editor, scores, data=(X, Y), ratio=ratio)
    guard.check()


def test_a_ratio_that_empties_only_some_layers_warns_and_prunes_the_rest():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 64, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 4),
    ).eval()
    x = torch.randn(2, 3, 12, 12)
    with pytest.warns(UserWarning, match=r"ratio 0.9 leaves no channel in '0' \(8 channels\)"):
        pe.edit(
            model, "prune", pe.score(model, "l1", example_inputs=x), example_inputs=x, ratio=0.9
        )
    assert model[0].out_channels == 8 and model[2].out_channels == 6  # int(64 * 0.1)


# -- 13. weights of another kind ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.bool])
def test_integer_or_bool_weights_for_a_float_model_are_refused(tmp_path, dtype):
    model = tiny()
    guard = Untouched(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight"] = (state["0.weight"] * 100).to(dtype)
    f = tmp_path / "w.safetensors"
    save_file(state, str(f))
    with pytest.raises(
        InputError,
        match=rf"w.safetensors: tensor\(s\) of the wrong kind for the model: "
        rf"'0.weight' \({dtype}, the model's torch.float32\)",
    ):
        api.load_weights_into(model, f)
    guard.check()


def test_weights_of_another_float_precision_keep_the_models_dtype():
    model, other = tiny(), tiny()
    with torch.no_grad():
        other[0].weight.add_(1)
    load_state(
        model,
        {k: v.double() if v.is_floating_point() else v for k, v in other.state_dict().items()},
        "x",
    )
    assert model[0].weight.dtype == torch.float32 and torch.equal(model[0].weight, other[0].weight)


def test_num_classes_beyond_the_output_width_is_refused():
    model = tiny(classes=4)
    guard = Untouched(model)
    with pytest.raises(InputError, match="num_classes 20 is more than the model's output width 4"):
        pe.score(model, "witness", data=(X, Y), num_classes=20)
    guard.check()
