"""The acceptance figures of the CLI: the demo on digits, and `pluginedit prune` on a ResNet
trained on Fashion-MNIST with every built-in scorer."""
import json
import os
import subprocess

import pytest

from pluginedit import cli

from conftest import FMNIST_RECIPE

KEYS = {"accuracy", "per_class_accuracy", "params", "macs", "latency_ms"}


def test_demo_prunes_3x_within_2_points(tmp_path):
    out = tmp_path / "demo.json"
    env = {**os.environ, "PLUGINEDIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    run = subprocess.run(["pluginedit", "demo", "--report", str(out)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "params" in run.stdout and "before" in run.stdout       # the table was printed
    rep = json.loads(out.read_text())
    assert KEYS <= rep["before"].keys() and KEYS <= rep["after"].keys()
    assert rep["before"]["params"] >= 3 * rep["after"]["params"]
    assert rep["after"]["accuracy"] >= rep["before"]["accuracy"] - 0.02
    assert rep["before"]["accuracy"] > 0.95


@pytest.mark.parametrize("scorer", ["l1", "l2", "random", "taylor"])
def test_prune_fashion_mnist_resnet(scorer, shared_data, fmnist_resnet, tmp_path, capsys):
    out = tmp_path / f"{scorer}.json"
    code = cli.main(["prune", "--arch", "resnet", "--data", "fashion-mnist", "--data-dir", str(shared_data),
                     *FMNIST_RECIPE, "--scorer", scorer, "--ratio", "0.5", "--report", str(out),
                     "--calib-samples", "512", "--test-samples", "2000"])
    assert code == 0
    rep = json.loads(out.read_text())
    before, after = rep["before"], rep["after"]
    assert len(after["per_class_accuracy"]) == 10
    assert after["params"] < 0.5 * before["params"] and after["macs"] < 0.5 * before["macs"]
    assert after["latency_ms"] < before["latency_ms"]
    assert before["accuracy"] > 0.8


def test_cli_bad_input_exits_2_with_message(capsys):
    assert cli.main(["prune", "--scorer", "nope"]) == 2
    assert "unknown scorer 'nope'" in capsys.readouterr().err
    assert cli.main(["prune", "--ratio", "1.5"]) == 2
    assert "ratio must lie in (0, 1)" in capsys.readouterr().err
