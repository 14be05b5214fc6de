"""Acceptance figures: the demo on digits, and pruning a ResNet trained on Fashion-MNIST with
every built-in scorer (the CLI report once, the rest in-process)."""

import copy
import json
import os
import subprocess

import pytest
from conftest import FMNIST_RECIPE

import pluginedit as pe
from pluginedit import cli, report
from pluginedit.core import registry

KEYS = {"accuracy", "per_class_accuracy", "params", "macs", "latency_ms"}


def test_demo_shows_modhifi_against_l1_and_reloads(tmp_path):
    out = tmp_path / "demo.json"
    env = {**os.environ, "PLUGINEDIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    run = subprocess.run(
        [
            "pluginedit",
            "demo",
            "--report",
            str(out),
            "--save",
            str(tmp_path / "m"),
            "--plot",
            str(tmp_path / "demo.png"),
            "--progress",  # stderr is a pipe here: the flag turns the bars on
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "modhifi-p, no fine-tuning" in run.stdout and "fresh process" in run.stdout
    assert "demo: prune three ways" in run.stderr and "train: " in run.stderr  # the bars
    assert run.stdout.splitlines()[-1].startswith("pluginedit demo: done in ")
    rep = json.loads(out.read_text())
    assert rep["before"] == rep["dense"] and rep["after"] == rep["rows"][-1]  # as README says
    dense, (ft, l1, mh) = rep["dense"], rep["rows"]
    assert KEYS <= dense.keys() and all(KEYS <= r.keys() for r in rep["rows"])
    assert dense["accuracy"] > 0.95
    assert ft["params"] == l1["params"] and abs(mh["params"] - l1["params"]) <= 0.02 * l1["params"]
    assert dense["params"] >= 3 * mh["params"]
    assert ft["accuracy"] >= dense["accuracy"] - 0.02  # the usual recipe, with training
    assert mh["accuracy"] > l1["accuracy"] + 0.2  # no training at all
    assert rep["reload"]["max_abs_logit_diff"] <= 1e-5
    assert rep["reload"]["accuracy"] == pytest.approx(mh["accuracy"], abs=1e-6)
    assert (tmp_path / "m" / "manifest.json").exists() and (
        tmp_path / "demo.png"
    ).stat().st_size > 0


@pytest.mark.slow
def test_prune_fashion_mnist_resnet_report(shared_data, fmnist_resnet, tmp_path):
    out = tmp_path / "report.json"
    code = cli.main(
        [
            "prune",
            "--arch",
            "resnet",
            "--data",
            "fashion-mnist",
            "--data-dir",
            str(shared_data),
            *FMNIST_RECIPE,
            "--scorer",
            "l1",
            "--ratio",
            "0.5",
            "--report",
            str(out),
            "--calib-samples",
            "512",
            "--test-samples",
            "2000",
        ]
    )
    assert code == 0
    rep = json.loads(out.read_text())
    before, after = rep["before"], rep["after"]
    assert KEYS <= before.keys() and KEYS <= after.keys() and len(after["per_class_accuracy"]) == 10
    assert after["params"] < 0.5 * before["params"] and after["macs"] < 0.5 * before["macs"]
    # wall-clock latency is noise on a busy machine: the report may claim a speed-up only when
    # its timings support one, and a pruned model is never significantly slower
    sp = rep["latency_speedup"]
    assert sp == report.speedup(before["latency"], after["latency"])
    assert not (sp["significant"] and sp["ratio"] < 1)
    assert before["accuracy"] > 0.8
    assert rep["health"]["status"] == report.health(rep, 10)["status"]


BUILTIN_SCORERS = sorted(n for n, p in registry.plugins("scorer").items() if p.dist == "pluginedit")


@pytest.mark.parametrize("scorer", BUILTIN_SCORERS)
def test_every_builtin_scorer_prunes_the_fashion_mnist_resnet(scorer, fmnist, fmnist_resnet):
    model = copy.deepcopy(fmnist_resnet)
    calib, example = fmnist.train.subset(512, seed=1), fmnist.test.x[:64]
    scores = pe.score(model, scorer, data=calib, num_classes=10)
    pe.edit(model, "prune", scores, ratio=0.5, example_inputs=example[:1])
    assert model(example).shape == fmnist_resnet(example).shape
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(model) < 0.5 * params(fmnist_resnet)
    sp = report.speedup(report.latency(fmnist_resnet, example), report.latency(model, example))
    assert not (sp["significant"] and sp["ratio"] < 1)  # never measurably slower


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_message(capsys):
    assert cli.main(["prune", "--scorer", "nope"]) == 2
    assert "unknown scorer 'nope'" in capsys.readouterr().err
    assert cli.main(["prune", "--ratio", "1.5"]) == 2
    assert "ratio must lie in (0, 1)" in capsys.readouterr().err


@pytest.mark.slow
def test_forget_writes_forgetting_report(tmp_path):
    out = tmp_path / "forget.json"
    assert cli.main(["forget", "--class", "3", "--report", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["before"]["forgotten_accuracy"] > 0.9
    assert rep["after"]["forgotten_accuracy"] <= 0.05
    assert rep["after"]["retained_accuracy"] >= rep["before"]["retained_accuracy"] - 0.03


def test_editor_of_the_wrong_kind_exits_2(capsys):
    """Formerly a raw TypeError and exit status 1."""
    assert cli.main(["forget", "--class", "3", "--editor", "prune"]) == 2
    assert "'prune' is a prune editor" in capsys.readouterr().err
    assert cli.main(["prune", "--editor", "discedit-u"]) == 2
    assert "'discedit-u' is a forget editor" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_with_an_editor_that_scores_itself(tmp_path):
    """discedit-sp computes its own scores and was always refused ('global_pruning' injected)."""
    out = tmp_path / "sp.json"
    assert (
        cli.main(["prune", "--editor", "discedit-sp", "--ratio", "0.25", "--report", str(out)]) == 0
    )
    rep = json.loads(out.read_text())
    assert rep["edit"]["editor"] == "discedit-sp" and rep["edit"]["scores"] is None
    assert rep["after"]["params"] < rep["before"]["params"]
    assert rep["edit"]["options"]["ratio"] == 0.25


def test_cli_flags_reach_only_editors_that_declare_them(capsys):
    assert cli.main(["prune", "--editor", "mask", "--global"]) == 2
    assert "has no option(s) ['global_pruning']" in capsys.readouterr().err


def test_help_and_describe(capsys):
    with pytest.raises(SystemExit):
        cli.main(["prune", "--help"])
    assert "resnet50" in capsys.readouterr().out
    assert cli.main(["plugins", "--describe", "modhifi-p"]) == 0
    out = capsys.readouterr().out
    assert "kind=prune" in out and "calib_samples = 2048" in out
    assert cli.main(["plugins", "--describe", "nope"]) == 2


@pytest.mark.gpu
def test_fit_moves_batches_to_the_models_device():
    import torch

    from pluginedit.capture import Split
    from pluginedit.contrib import train, zoo

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = zoo.build("vgg", 1, 10, widths=(4,), hidden=8).cuda()
    split = Split(torch.randn(64, 1, 8, 8), torch.arange(64) % 10)  # CPU data
    train.fit(model, split, epochs=1)
    assert next(model.parameters()).is_cuda
