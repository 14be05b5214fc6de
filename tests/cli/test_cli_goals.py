"""Every editing command says whether its edit reached its goal: a rectification that fixes no
pair fails (model unchanged, nonzero exit) or says so on its first line, the fraction of pairs
fixed is printed, the report names the model it describes, a destroyed model is flagged with
what to try instead, and warnings are one clean line."""

import copy
import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

import pluginedit as pe
from pluginedit import cli
from pluginedit.cli.console import one_line_warnings
from pluginedit.core.errors import EditError
from pluginedit.editors import rectify as rectify_module
from pluginedit.evaluate import predictions
from pluginedit.linalg import IllConditionedWarning

FACTORY = "pluginedit.contrib.zoo:build"
BUILD = {"arch": "vgg", "in_channels": 1, "num_classes": 10, "widths": [32, 64], "hidden": 64}


@pytest.fixture
def pairs_run(tmp_path, digits, digits_vgg):
    """The digits VGG as a user's --model with --weights, and a pairs file of three clean
    digits each 'corrupted' into a digit the model reads as another class."""
    weights, pairs = tmp_path / "w.safetensors", tmp_path / "pairs.safetensors"
    save_file({k: v.contiguous() for k, v in digits_vgg.state_dict().items()}, str(weights))
    x, y = digits.train.x[:200], digits.train.y[:200]
    pred = predictions(digits_vgg, x)
    clean = [int(i) for i in (pred == y).nonzero()[:3, 0]]
    other = [int((pred != pred[i]).nonzero()[0, 0]) for i in clean]
    save_file(
        {"clean": x[clean].contiguous(), "corrupted": x[other].contiguous(), "y": y[clean]},
        str(pairs),
    )
    argv = ["rectify", "--data", "digits", "--model", FACTORY, "--model-args", json.dumps(BUILD)]
    return argv + ["--weights", str(weights), "--pairs", str(pairs), "--calib-samples", "256"]


def test_a_rank_one_edit_that_rectifies_nothing_fails_and_leaves_the_model(
    pairs_run, digits, digits_vgg, monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(rectify_module, "rank_one_edit", lambda *a, **k: None)  # a no-op edit
    model = copy.deepcopy(digits_vgg)
    clean, corrupted = digits.train.x[:2], digits.train.x[2:4]
    pairs = pe.Pairs(clean, corrupted, digits.train.y[:2])
    before = predictions(model, corrupted) != predictions(model, clean)
    assert before.any()
    with pytest.raises(EditError, match="rectified none of the"):
        pe.edit(model, "rank-one", data=digits.train.subset(256), pairs=pairs)
    for a, b in zip(model.state_dict().values(), digits_vgg.state_dict().values()):
        assert torch.equal(a, b)
    out = tmp_path / "r.json"
    code = cli.main(pairs_run + ["--editor", "rank-one", "--report", str(out)])
    assert code == 2 and "rectified none of the 3 pair(s)" in capsys.readouterr().err
    assert not out.exists()


def test_an_edit_that_undoes_itself_says_so_first_and_exits_1(pairs_run, capsys, tmp_path):
    """interpolate at t=0 keeps the original layer: none of the pairs rectified."""
    out, saved = tmp_path / "r.json", tmp_path / "m"
    argv = pairs_run + ["--editor", "interpolate", "-o", "t=0.0", "-o", "base_options={'rank': 3}"]
    code = cli.main(argv + ["--report", str(out), "--save", str(saved)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert "FAILED, reached none of its goal: 0 of 3 pairs rectified (0%)" in lines[0]
    assert any("not saved" in line for line in lines) and not saved.exists()
    assert lines[-1].startswith("pluginedit rectify: exit status 1 in ")
    rep = json.loads(out.read_text())
    assert rep["goal"]["status"] == "none" and rep["rectified"] == rep["goal"]["rectified_before"]
    assert rep["model"] == FACTORY and rep["model"] in lines[0]


def test_a_rectification_prints_the_fraction_of_pairs_fixed(pairs_run, capsys, tmp_path):
    out = tmp_path / "r.json"
    assert cli.main(pairs_run + ["--editor", "rank-one", "-o", "rank=3", "--report", str(out)]) == 0
    text = capsys.readouterr().out
    goal = json.loads(out.read_text())["goal"]
    assert goal["of"] == 3 and goal["done"] >= 1 and goal["status"] in ("partial", "reached")
    said = f"{goal['done']} of 3 pairs rectified ({goal['done'] / 3:.0%})"
    assert text.splitlines()[0].startswith(f"rank-one on {FACTORY} / digits: {said}")


def test_a_destroyed_model_is_flagged_with_what_to_try(tmp_path, digits_vgg, capsys):
    """Masking 95% of every layer's channels leaves the digits CNN at chance."""
    out = tmp_path / "p.json"
    argv = ["prune", "--data", "digits", "--editor", "mask", "--ratio", "0.95"]
    assert cli.main(argv + ["--report", str(out), "--test-samples", "500"]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert first.startswith("mask (scorer l1, ratio 0.95) on vgg / digits: WARNING, the edit")
    assert "destroyed the model" in first and "at chance (chance is 1/10 = 0.10)" in first
    assert "--editor modhifi-p" in text and "--finetune-epochs 1" in text
    assert "--ratio 0.475" in text
    rep = json.loads(out.read_text())
    assert rep["health"]["status"] == "destroyed" and rep["after"]["accuracy"] < 0.15


def test_warnings_are_one_clean_line(capsys):
    with one_line_warnings():
        warnings.simplefilter("always")
        warnings.warn(
            "Gram: ill-conditioned\n  in 3 of 4 solves", IllConditionedWarning, stacklevel=1
        )
    err = capsys.readouterr().err
    assert (
        err
        == "pluginedit: warning: IllConditionedWarning: Gram: ill-conditioned in 3 of 4 solves\n"
    )
    assert warnings.showwarning.__module__ == "warnings"  # the handler is restored
