"""Plugin discovery through entry points: built-ins, broken, duplicate and incompatible plugins,
the autoload switch, and a real third-party package installed with pip (into a temporary folder)."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pluginedit import cli
from pluginedit.core import registry
from pluginedit.core.errors import InputError, PluginError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pluginedit-example-scorer"


def fake_dist(root: Path, name: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """A distribution on sys.path as pip would leave it: dist-info with METADATA + entry points."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[pluginedit.scorers]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
    )
    for mod, src in modules.items():
        (root / f"{mod}.py").write_text(src)


GOOD = "from pluginedit.core.plugin import Scorer\nclass S(Scorer):\n    name = 'x'\n"


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.AUTOLOAD_ENV, raising=False)
    registry.refresh()
    yield tmp_path
    registry.refresh()


def test_builtins_come_through_entry_points():
    table = registry.plugins("scorer")
    for name in ("l1", "l2", "random", "taylor"):
        assert table[name].dist == "pluginedit" and table[name].obj is not None
    assert {"prune", "mask"} <= set(registry.plugins("editor"))


def test_broken_plugin_is_reported_not_fatal(plugin_path, capsys):
    fake_dist(
        plugin_path,
        "broken-plugin",
        {"broken": "broken_mod:S"},
        {"broken_mod": "raise ImportError('missing dependency foo')\n"},
    )
    registry.refresh()
    info = registry.plugins("scorer")["broken"]
    assert info.obj is None and "missing dependency foo" in info.error
    assert registry.get_scorer("l1").name == "l1"  # the rest still works
    with pytest.raises(PluginError, match=r"broken-plugin\[broken\].*missing dependency foo"):
        registry.get_scorer("broken")
    assert cli.main(["plugins"]) == 0
    assert "BROKEN: import failed" in capsys.readouterr().out
    assert cli.main(["plugins", "--describe", "broken"]) == 2  # not "unknown plugin"
    err = capsys.readouterr().err
    assert (
        "plugin 'broken'" in err
        and "is broken: import failed" in err
        and "missing dependency foo" in err
    )


def test_describe_prints_the_whole_docstring(capsys):
    from pluginedit.editors.modhifi_p import ModHiFiP

    assert cli.main(["plugins", "--describe", "modhifi-p"]) == 0
    out = capsys.readouterr().out
    last = [ln.strip() for ln in ModHiFiP.__doc__.strip().splitlines()][-1]
    assert len(ModHiFiP.__doc__.strip().splitlines()) > 1 and last in out


def test_duplicate_name_names_both_distributions(plugin_path):
    fake_dist(plugin_path, "copycat", {"l1": "copycat_mod:S"}, {"copycat_mod": GOOD})
    registry.refresh()
    with pytest.raises(PluginError, match=r"duplicate scorer name 'l1'") as err:
        registry.get_scorer("l1")
    assert "pluginedit[l1]" in str(err.value) and "copycat[l1]" in str(err.value)


def test_incompatible_api_version(plugin_path):
    fake_dist(
        plugin_path,
        "future-plugin",
        {"future": "future_mod:S"},
        {"future_mod": GOOD + "    api_version = 99\n"},
    )
    registry.refresh()
    with pytest.raises(PluginError, match=r"future-plugin\[future\].*api_version 99"):
        registry.get_scorer("future")


def test_autoload_switch_keeps_only_builtins(plugin_path, monkeypatch):
    fake_dist(plugin_path, "extra", {"extra": "extra_mod:S"}, {"extra_mod": GOOD})
    monkeypatch.setenv(registry.AUTOLOAD_ENV, "1")
    registry.refresh()
    assert "extra" not in registry.plugins("scorer") and "l1" in registry.plugins("scorer")
    monkeypatch.delenv(registry.AUTOLOAD_ENV)
    registry.refresh()
    assert registry.plugins("scorer")["extra"].dist == "extra"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InputError, match=r"unknown scorer 'nope'; known: .*l1.*taylor"):
        registry.get_scorer("nope")


def _forget_example_modules() -> None:
    for name in [
        m for m in sys.modules if m == "pluginedit_example" or m.startswith("pluginedit_example.")
    ]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory):
    """The example package as pip installs it, but into a temporary target on sys.path (and
    PYTHONPATH, for the CLI subprocess) for this module only: nothing stays in the environment,
    and pip builds a copy, so no build/ or egg-info lands in examples/ (issue 27). Its own tests
    are in examples/pluginedit-example-scorer/tests."""
    tmp = tmp_path_factory.mktemp("example-plugin")
    src, target = tmp / "src", tmp / "site"
    shutil.copytree(
        EXAMPLE, src, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(target))
        mp.setenv(
            "PYTHONPATH",
            os.pathsep.join([str(target), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        mp.delenv(registry.AUTOLOAD_ENV, raising=False)
        _forget_example_modules()
        importlib.invalidate_caches()
        registry.refresh()
        yield target
    _forget_example_modules()
    importlib.invalidate_caches()
    registry.refresh()


@pytest.mark.slow
def test_example_plugin_is_discovered_and_prunes(example_installed, tmp_path):
    listing = subprocess.run(
        [sys.executable, "-m", "pluginedit.cli", "plugins"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    row = next(line for line in listing.splitlines() if line.startswith("bn-gamma"))
    assert "pluginedit-example-scorer" in row and "0.1.0" in row and row.endswith("ok")
    out = tmp_path / "report.json"
    assert cli.main(["prune", "--scorer", "bn-gamma", "--ratio", "0.5", "--report", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["scorer"] == "bn-gamma"
    assert rep["after"]["params"] * 3 < rep["before"]["params"]


def test_example_scorer_shares_the_pass_and_editor_undoes(example_installed, digits, digits_vgg):
    """act-rms declares a statistic: scored together with fidelity it gives exactly its own
    scores; zero-lowest is reversible byte for byte."""
    import copy

    import torch

    import pluginedit as pe

    calib = digits.train.subset(256)
    both = pe.score_many(digits_vgg, ["act-rms", "fidelity"], data=calib)
    alone = pe.score(digits_vgg, "act-rms", data=calib)
    for path in alone:
        assert torch.equal(both["act-rms"][path], alone[path])
    model = copy.deepcopy(digits_vgg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = pe.edit(model, "zero-lowest", alone, fraction=0.5)
    assert rec.reversible and rec.scores == "act-rms" and rec.num_changed() > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    rec.undo(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
