"""Progress on the long steps: a bar on training, on the calibration passes inside an editor
that has no flag of its own, on COAR's masks; `--quiet` silences them; every command closes with
one line saying what ran and how long it took."""

import re

import pytest

import pluginedit as pe
from pluginedit import cli
from pluginedit.contrib import zoo
from pluginedit.core.progress import shown
from pluginedit.scorers.coar import estimate


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUGINEDIT_CACHE", str(tmp_path / "cache"))


def _train(*flags):
    return cli.main(
        ["train", "--data", "digits", "--epochs", "1", "--train-samples", "600", *flags]
    )


def test_training_shows_a_bar_and_a_closing_summary(fresh_cache, capsys):
    assert _train("--progress") == 0
    out, err = capsys.readouterr()
    assert re.search(r"train: +\d+%\|", err)  # tqdm's bar, on stderr (cleared when done)
    assert out.splitlines()[-1].startswith("pluginedit train: done in ")


def test_quiet_silences_the_bars_and_contradicts_progress(fresh_cache, capsys):
    assert _train("--quiet") == 0
    out, err = capsys.readouterr()
    assert "train:" not in err and "it/s" not in err
    assert "pluginedit train: done in " in out
    assert _train("--quiet", "--progress") == 2
    assert "--progress and --quiet contradict" in capsys.readouterr().err


def test_an_editors_calibration_pass_shows_a_bar_without_a_flag_of_its_own(
    digits, digits_vgg, capsys
):
    import copy

    model, calib = copy.deepcopy(digits_vgg), digits.train.subset(256)
    pe.edit(model, "modhifi-p", data=calib, ratio=0.25)
    assert "statistics" not in capsys.readouterr().err  # off unless asked
    model = copy.deepcopy(digits_vgg)
    with shown(True):
        pe.edit(model, "modhifi-p", data=calib, ratio=0.25)
    assert re.search(r"statistics: +\d+%\|", capsys.readouterr().err)


def test_coar_masks_show_a_bar(digits, capsys):
    model = zoo.build("vgg", 1, 10, widths=(4,), hidden=8).eval()
    x, y = digits.train.x[:8], digits.train.y[:8]
    with shown(True):
        estimate(model, x, y, ["features.0"], n_masks=32, prior="none", chunk=8, block=16)
    err = capsys.readouterr().err
    assert re.search(r"COAR masks: +\d+%\|.*/32 \[", err)
