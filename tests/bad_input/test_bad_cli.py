"""Issue 22, the command line: every output path and every pair of flags that contradict each
other is refused before any data or model is loaded (exit status 2, one line naming the problem),
and bad numbers, model arguments, pair labels and transformers folders are named, not tracebacks."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from _bad_input_helpers import Untouched, X, Y, tiny
from safetensors.torch import save_file

import pluginedit as pe
from pluginedit import cli
from pluginedit.cli import checks
from pluginedit.core import registry
from pluginedit.core.errors import InputError


def _exits_2_at_once(argv, capsys, within: float | None = 2.0) -> str:
    """Run the CLI; it must exit 2 within ``within`` seconds (before loading data or training a
    model) and print one error line, no traceback. Returns that line."""
    t0 = time.perf_counter()
    code = cli.main(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert within is None or seconds < within, f"{seconds:.1f}s: the check ran after the work"
    assert err.startswith("pluginedit: error:") and "\n" not in err and "Traceback" not in err, err
    return err


# --- output paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,match",
    [
        (["prune", "--report", "{missing}/r.json"], "does not exist"),
        (["prune", "--report", "{folder}"], "is an existing folder; --report names a file"),
        (["forget", "--class", "1", "--report", "{folder}"], "is an existing folder"),
        (["prune", "--save", "{file}"], "is an existing file; --save names a folder"),
        (["prune", "--save", "{file}/sub"], "is not a folder"),
        (["prune", "--plot", "{folder}/x.xyz"], "matplotlib cannot write .xyz files"),
        (["prune", "--plot", "{missing}/x.png"], "does not exist"),
        (["score", "--out", "{missing}/scores"], "does not exist"),
        (["fix", "--report", "{missing}/r.json"], "does not exist"),
        (["demo", "--report", "{missing}/r.json"], "does not exist"),
        (["demo", "--plot", "{folder}/demo.xyz"], "matplotlib cannot write"),
    ],
)
def test_bad_output_paths_fail_before_any_work(argv, match, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    names = {"missing": tmp_path / "missing", "folder": tmp_path, "file": tmp_path / "file"}
    argv = [a.format(**names) for a in argv]
    flag = next(a for a in argv if a.startswith("--") and a != "--class")
    err = _exits_2_at_once(argv, capsys)
    assert match in err and flag in err


def test_output_paths_that_can_be_written_pass(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    for flag, path, kind in [
        ("--report", tmp_path / "old.json", "file"),  # replaced whole
        ("--save", tmp_path / "new" / "deeper", "folder"),  # created with parents
        ("--save", tmp_path, "folder"),
        ("--out", tmp_path / "scores", "stem"),
    ]:
        assert checks._check_output(flag, str(path), kind) is None  # no error: accepted
    for name in ("a.png", "a.PDF", "a.svg", "a.jpg", "a"):  # no extension: png
        assert checks._check_plot_format(str(tmp_path / name)) is None


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_folder_fails_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = _exits_2_at_once(["prune", "--report", str(locked / "r.json")], capsys)
    finally:
        locked.chmod(0o700)
    assert "is not writable" in err


# --- a flag and the same option given with -o --------------------------------------------


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--ratio", "0.3", "-o", "ratio=0.4"], "--ratio and -o ratio="),
        (["--global", "-o", "global_pruning=False"], "--global and -o global_pruning="),
    ],
)
def test_flag_and_the_same_option_with_o_conflict(argv, match, capsys):
    err = _exits_2_at_once(["prune", *argv], capsys)
    assert match in err and "give it once" in err


def test_the_same_option_twice_with_o_is_an_error(capsys):
    err = _exits_2_at_once(["prune", "-o", "ratio=0.3", "-o", "ratio=0.4"], capsys)
    assert "-o ratio= is given 2 times: give each option once" in err


def test_ratio_reaches_the_editor_from_either_place_and_defaults_to_half():
    cls = registry.get("editor", "prune")
    args = cli.parser().parse_args(["prune", "-o", "ratio=0.25"])
    assert cli._prune_flags(args, cls, {"ratio": 0.25}) == {}
    assert cli._prune_flags(cli.parser().parse_args(["prune"]), cls, {}) == {"ratio": 0.5}
    assert cli._prune_flags(
        cli.parser().parse_args(["prune", "--ratio", "0.3", "--global"]), cls, {}
    ) == {"ratio": 0.3, "global_pruning": True}


# --- the model's description ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["--model", "_bad_input_helpers:tiny", "--model-args", "[8]"],
            "--model-args must be a JSON object",
        ),
        (
            ["--model", "_bad_input_helpers:tiny", "--model-args", "{bad"],
            "--model-args is not valid JSON",
        ),
        (["--model-args", '{"classes": 4}'], "--model-args is read only with --model"),
        (["--arch", "resnet", "--model", "_bad_input_helpers:tiny"], "--arch resnet and --model"),
        (["--arch", "vgg", "--hf", "some/folder"], "--arch vgg and --hf some/folder"),
        (
            ["--model", "_bad_input_helpers:tiny", "--hf", "some/folder"],
            "--model _bad_input_helpers:tiny and --hf",
        ),
    ],
)
def test_model_description_is_checked_before_any_work(argv, match, capsys):
    err = _exits_2_at_once(["prune", *argv], capsys)
    assert match in err


def test_arch_defaults_to_vgg_only_when_nothing_names_the_model():
    args = cli.parser().parse_args(["prune"])
    checks.check_args(args)
    assert args.arch == "vgg"
    args = cli.parser().parse_args(["prune", "--model", "_bad_input_helpers:tiny"])
    checks.check_args(args)
    assert args.arch is None


@pytest.mark.parametrize(
    "command,match",
    [("rectify", "--model / --hf need --pairs"), ("train", "trains zoo models (--arch)")],
)
def test_commands_that_cannot_use_a_model_of_your_own_say_so(command, match, capsys):
    err = _exits_2_at_once([command, "--model", "_bad_input_helpers:tiny"], capsys)
    assert match in err


# --- numbers refused when the command line is parsed ----------------------------------


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["prune", "--finetune-epochs", "-1"], "--finetune-epochs"),
        (["forget", "--class", "1", "--finetune-epochs", "-3"], "--finetune-epochs"),
        (["demo", "--finetune-epochs", "-1"], "--finetune-epochs"),
        (["prune", "--seed", str(2**70)], "--seed"),
        (["score", "--seed", str(2**64)], "--seed"),
        (["demo", "--seed", "-1"], "--seed"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and ("2**64" in err if flag == "--seed" else ">= 0" in err)


def test_zero_finetune_epochs_and_the_largest_seed_parse():
    assert cli.parser().parse_args(["prune", "--finetune-epochs", "0"]).finetune_epochs == 0
    assert cli.parser().parse_args(["prune", "--seed", str(2**64 - 1)]).seed == 2**64 - 1


# --- pair labels -------------------------------------------------------------------------


def _pairs_file(tmp_path, y) -> str:
    f = tmp_path / "pairs.safetensors"
    save_file(
        {
            "clean": X[: len(y)].contiguous(),
            "corrupted": X[len(y) : 2 * len(y)].contiguous(),
            "y": y,
        },
        str(f),
    )
    return str(f)


@pytest.mark.parametrize(
    "y", [torch.tensor([1.0, 2.7]), torch.tensor([1.0, 2.0]), torch.tensor([[1, 2]])]
)
def test_rectify_pair_labels_must_be_integers(y, tmp_path, capsys):
    err = _exits_2_at_once(
        ["rectify", "--model", "_bad_input_helpers:tiny", "--pairs", _pairs_file(tmp_path, y)],
        capsys,
    )
    assert "y must be a 1-D array of integer class labels" in err


def test_rectify_pair_labels_beyond_the_model_output_are_refused(tmp_path, capsys):
    data = tmp_path / "data.safetensors"
    save_file({"x": X.repeat(3, 1, 1, 1).contiguous(), "y": Y.repeat(3).contiguous()}, str(data))
    argv = [
        "rectify",
        "--model",
        "_bad_input_helpers:tiny",
        "--data",
        str(data),
        "--pairs",
        _pairs_file(tmp_path, torch.tensor([1, 4])),
    ]  # tiny() has 4 outputs
    assert cli.main(argv) == 2
    assert "labels out of range: found [1, 4], expected [0, 3]" in capsys.readouterr().err


@pytest.mark.parametrize("editor", ["rank-one", "rectify"])
def test_pair_labels_beyond_the_model_output_are_refused_by_the_api(editor):
    model = tiny()
    untouched = Untouched(model)
    with pytest.raises(InputError, match=r"labels out of range: found \[0, 9\], expected \[0, 3\]"):
        pe.edit(model, editor, data=(X, Y), pairs=pe.Pairs(X[:2], X[2:4], torch.tensor([0, 9])))
    untouched.check()


# --- a transformers folder whose config.json transformers cannot read ---------------------


@pytest.fixture(params=["not json", "unknown model_type", "no model_type"])
def broken_hf(request, tmp_path):
    pytest.importorskip("transformers")
    text = {
        "not json": "{not json",
        "unknown model_type": json.dumps({"model_type": "no-such-model"}),
        "no model_type": json.dumps({"hidden_size": 4}),
    }[request.param]
    (tmp_path / "config.json").write_text(text)
    return tmp_path


def test_broken_hf_config_is_named_by_load_model(broken_hf):
    with pytest.raises(InputError, match="config.json cannot be read by transformers") as e:
        pe.load_model(hf=broken_hf)
    assert str(broken_hf) in str(e.value)


def test_broken_hf_config_exits_2_from_the_cli(broken_hf, capsys):
    err = _exits_2_at_once(
        ["score", "--hf", str(broken_hf)], capsys, within=None
    )  # imports transformers
    assert str(broken_hf) in err and "config" in err
