"""Interrupted runs and damaged files: SIGINT leaves no partial output and a clean cache, every
write is whole or absent, and a corrupted cache checkpoint, saved model or Scores file is an
``InputError`` naming the file (exit status 2 from the CLI), never a raw traceback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _bad_input_helpers import Untouched, X, tiny
from safetensors.torch import save_file
from torch import nn

import pluginedit as pe
from pluginedit import cli, report
from pluginedit.contrib import data, train, zoo
from pluginedit.core import scores as scores_module
from pluginedit.core.errors import InputError
from pluginedit.io import persist

TINY = {"widths": (4,), "hidden": 8}  # a digits VGG that trains in about a second


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- SIGINT ---------------------------------------------------------------------------------------


def test_sigint_leaves_no_partial_output_and_a_clean_cache(tmp_path):
    """`pluginedit score` interrupted while it trains the model it scores: exit status 130, one
    line on stderr, no traceback, no output file, no checkpoint (whole or partial) in the cache."""
    cache, out, err = tmp_path / "cache", tmp_path / "out", tmp_path / "stderr.txt"
    out.mkdir()
    env = {**os.environ, "PLUGINEDIT_CACHE": str(cache), "PLUGINEDIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pluginedit.cli",
                "score",
                "--data",
                "digits",
                "--out",
                str(out / "scores"),
                "--progress",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            # a suite started in the background (`pytest &`) ignores SIGINT and its children
            # inherit that: restore the default so Python raises KeyboardInterrupt again
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 60
            while b"train" not in err.read_bytes():  # the training bar: it is working
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
                time.sleep(0.05)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = err.read_text()
    assert rc == 130, text
    assert "pluginedit: interrupted" in text and "Traceback" not in text
    assert _leftovers(out) == []
    assert _leftovers(cache) == []


def _interrupting_writer(real, after: int = 64):
    """A save_file that writes ``after`` bytes of the real file, then is interrupted."""

    def write(tensors, filename, *args, **kw):
        real(tensors, filename, *args, **kw)
        Path(filename).write_bytes(Path(filename).read_bytes()[:after])
        raise KeyboardInterrupt

    return write


def test_interrupted_scores_save_keeps_the_previous_files(tmp_path, monkeypatch):
    old = pe.Scores({"0": torch.arange(8.0)}, "l1")
    old.save(tmp_path / "run")
    before = _leftovers(tmp_path)
    monkeypatch.setattr(scores_module, "save_file", _interrupting_writer(scores_module.save_file))
    with pytest.raises(KeyboardInterrupt):
        pe.Scores({"0": torch.ones(8)}, "witness").save(tmp_path / "run")
    assert _leftovers(tmp_path) == before == ["run.json", "run.safetensors"]
    back = pe.Scores.load(tmp_path / "run")
    assert back.scorer == "l1" and torch.equal(back["0"], torch.arange(8.0))


def test_interrupted_model_save_keeps_the_previous_save(tmp_path, monkeypatch):
    model = pe.load_model("torch.nn:Linear", {"in_features": 4, "out_features": 3})
    first = {k: v.clone() for k, v in model.state_dict().items()}
    pe.save(model, tmp_path / "m")
    with torch.no_grad():
        model.weight.add_(1)
    monkeypatch.setattr(persist, "save_file", _interrupting_writer(persist.save_file))
    with pytest.raises(KeyboardInterrupt):
        pe.save(model, tmp_path / "m")
    assert _leftovers(tmp_path) == ["m/manifest.json", "m/model.safetensors"]
    back = pe.load(tmp_path / "m")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in first.items())


@pytest.mark.slow
def test_interrupted_checkpoint_write_leaves_a_clean_cache(tmp_path, monkeypatch, digits):
    monkeypatch.setenv("PLUGINEDIT_CACHE", str(tmp_path))
    small = data.DataBundle(
        digits.name, digits.train.subset(120), digits.test, 10, digits.class_names
    )
    monkeypatch.setattr(train, "save_file", _interrupting_writer(train.save_file))
    with pytest.raises(KeyboardInterrupt):
        train.pretrained("vgg", small, epochs=1, config=TINY)
    assert _leftovers(tmp_path) == []


def test_interrupted_report_write_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(self, text, *a, **k):
        Path.write_bytes(self, text.encode()[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write({"accuracy": 0.5}, tmp_path / "report.json")
    assert _leftovers(tmp_path) == []


# -- the model cache -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cached(tmp_path_factory, digits):
    """A cache folder holding one good checkpoint of a tiny digits VGG, and its data."""
    folder = tmp_path_factory.mktemp("cache")
    small = data.DataBundle(
        digits.name, digits.train.subset(120), digits.test, 10, digits.class_names
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(train.CACHE_ENV, str(folder))
        train.pretrained("vgg", small, epochs=1, config=TINY)
    return folder, small


def _corrupt_checkpoint(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(path.stat().st_size))
    elif how == "other-model":
        save_file({"weight": torch.ones(3, 3)}, str(path))


@pytest.mark.slow
@pytest.mark.parametrize(
    "how,detail",
    [
        ("truncated", "not a readable safetensors file"),
        ("empty", "not a readable safetensors file"),
        ("garbage", "not a readable safetensors file"),
        ("other-model", "the weights do not fit the model"),
    ],
)
def test_corrupted_cache_checkpoint_is_named_and_retrain_repairs_it(
    cached, tmp_path, monkeypatch, how, detail
):
    folder, small = cached
    cache = tmp_path / "cache"
    shutil.copytree(folder, cache)
    monkeypatch.setenv(train.CACHE_ENV, str(cache))
    (ckpt,) = cache.glob("*.safetensors")
    good = train.pretrained("vgg", small, epochs=1, config=TINY).state_dict()
    _corrupt_checkpoint(ckpt, how)
    with pytest.raises(
        InputError, match=f"corrupted cache checkpoint: {ckpt}: {detail}.*--retrain"
    ):
        train.pretrained("vgg", small, epochs=1, config=TINY)
    train.pretrained("vgg", small, epochs=1, config=TINY, retrain=True)
    again = train.pretrained("vgg", small, epochs=1, config=TINY).state_dict()  # loads the new file
    assert all(torch.equal(good[k], again[k]) for k in good)  # training is seeded
    assert _leftovers(cache) == [ckpt.name]


@pytest.mark.slow
def test_cli_with_a_corrupted_cache_checkpoint_exits_2(tmp_path, monkeypatch, digits, capsys):
    monkeypatch.setenv(train.CACHE_ENV, str(tmp_path))
    key = train._key(
        "vgg", digits, zoo.default_config("vgg", "digits"), train.DEFAULT_EPOCHS["digits"], 0
    )
    (tmp_path / f"{key}.safetensors").write_bytes(b"\x00" * 100)
    assert cli.main(["score", "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert "pluginedit: error: corrupted cache checkpoint" in err and key in err


# -- saved models ---------------------------------------------------------------------------------


def _saved(tmp_path: Path) -> Path:
    model = pe.load_model("torch.nn:Linear", {"in_features": 4, "out_features": 3})
    return pe.save(model, tmp_path / "m")


def _rehash(folder: Path) -> None:
    """Make the manifest agree with the weights file again (a damaged file saved as if whole)."""
    man = json.loads((folder / "manifest.json").read_text())
    w = (folder / "model.safetensors").read_bytes()
    man["weights"].update(bytes=len(w), sha256=hashlib.sha256(w).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(man))


@pytest.mark.parametrize(
    "how,match",
    [
        ("garbage-weights", "model.safetensors: not a readable safetensors file"),
        ("other-weights", "model.safetensors: the weights do not fit the model"),
        ("no-manifest", "is not a saved pluginedit model: manifest.json is missing"),
        ("steps-not-a-list", "manifest.json: field 'steps' missing or not a list"),
        ("no-weights", "model.safetensors is missing"),
        ("unknown-factory", "manifest.json: model factory .no_such_pkg.mod:make. is not trusted"),
    ],
)
def test_corrupted_saved_model_is_named(tmp_path, how, match):
    folder = _saved(tmp_path)
    w, m = folder / "model.safetensors", folder / "manifest.json"
    if how == "garbage-weights":
        w.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}" + os.urandom(64))
        _rehash(folder)
    elif how == "other-weights":
        save_file({"weight": torch.ones(2, 2)}, str(w))
        _rehash(folder)
    elif how == "no-manifest":
        m.unlink()
    elif how == "steps-not-a-list":
        m.write_text(json.dumps({**json.loads(m.read_text()), "steps": {"0": 1}}))
    elif how == "no-weights":
        w.unlink()
    else:
        man = json.loads(m.read_text())
        man["source"]["factory"] = "no_such_pkg.mod:make"
        m.write_text(json.dumps(man))
    with pytest.raises(InputError, match=match) as e:
        pe.load(folder)
    assert str(folder) in str(e.value)


@pytest.mark.slow
def test_cli_with_corrupted_weights_exits_2(tmp_path, capsys):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not safetensors at all")
    assert cli.main(["score", "--data", "digits", "--weights", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"pluginedit: error: {bad}: not a readable safetensors file" in err


def test_loading_weights_that_do_not_fit_leaves_the_model_untouched(tmp_path):
    model = tiny()
    guard = Untouched(model)
    f = tmp_path / "w.safetensors"
    save_file(
        {k: v.clone() for k, v in list(tiny().state_dict().items())[:-1]}, str(f)
    )  # one missing
    with pytest.raises(InputError, match="the weights do not fit the model.*Missing key"):
        pe.api.load_weights_into(model, f)
    guard.check()


# -- Scores files ---------------------------------------------------------------------------------


def _damage_scores(stem: Path, how: str) -> None:
    tensors, head = Path(f"{stem}.safetensors"), Path(f"{stem}.json")
    if how == "truncated":
        tensors.write_bytes(tensors.read_bytes()[:-5])
    elif how == "not-json":
        head.write_text("{'scorer': 'l1'")
    elif how == "json-list":
        head.write_text("[1, 2]")
    elif how == "unknown-key":
        head.write_text(json.dumps({"scorer": "l1", "bogus": 1}))
    elif how == "options-not-object":
        head.write_text(json.dumps({"scorer": "l1", "options": [1]}))
    elif how == "two-dim":
        save_file({"0": torch.ones(2, 4)}, str(tensors))
    elif how == "nan":
        save_file({"0": torch.full((8,), float("nan"))}, str(tensors))
    elif how == "no-json":
        head.unlink()


@pytest.mark.parametrize(
    "how,match",
    [
        ("truncated", r"run.safetensors: not a readable safetensors file"),
        ("not-json", r"run.json: not valid JSON"),
        ("json-list", r"run.json: expected a JSON object"),
        ("unknown-key", r"run.json: expected a JSON object .*'bogus': 1"),
        ("options-not-object", r"run.json: expected a JSON object"),
        ("two-dim", r"run.safetensors: scores of '0' must be 1-D, got shape \(2, 4\)"),
        ("nan", r"run.safetensors: scores of '0' from scorer 'l1' contain NaN or Inf"),
        ("no-json", r"scores file .*run.json does not exist"),
    ],
)
def test_corrupted_scores_file_is_named(tmp_path, how, match):
    pe.score(tiny(), "l1", example_inputs=X[:1]).save(tmp_path / "run")
    _damage_scores(tmp_path / "run", how)
    with pytest.raises(InputError, match=match):
        pe.Scores.load(tmp_path / "run")


def test_scores_file_of_another_model_is_refused_by_the_editor(tmp_path):
    pe.Scores({"0": torch.ones(6)}, "l1").save(tmp_path / "run")
    model = tiny()
    guard = Untouched(model)
    with pytest.raises(InputError, match="scores of '0' have 6 entries but the layer has 8"):
        pe.edit(model, "mask", pe.Scores.load(tmp_path / "run"), ratio=0.5)
    guard.check()
    assert isinstance(model[0], nn.Conv2d)
