"""The benchmark scripts (issues 23, 27): every one answers --help at once without running, and
results go to a scratch folder unless --out names another, stamped with what made them."""

import importlib.util
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith(("test_", "_")))


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def results():
    return _load(BENCH / "_results.py", "pluginedit_bench_results")


def test_the_scripts_are_found():
    names = {p.stem for p in SCRIPTS}
    assert {"bench_kernels", "coar", "coar_heads", "spurious", "forget_family", "memory"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_exits_0_without_running(script, tmp_path):
    env = {**os.environ, "PLUGINEDIT_BENCH_OUT": str(tmp_path / "out")}
    run = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage" in run.stdout.lower()
    assert not (tmp_path / "out").exists()  # nothing done, nothing written
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]


def test_no_script_writes_to_the_committed_results_by_default():
    for script in SCRIPTS:
        assert 'parent / "results"' not in script.read_text(), script.name


def test_bench_kernels_is_part_of_the_command_line(capsys):
    # `pluginedit bench kernels` runs pluginedit.cli.bench, an ordinary module of the package (no
    # script loaded by file path); benchmarks/bench_kernels.py is a thin script over it
    from pluginedit import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "kernels", "--help"])
    assert e.value.code == 0
    assert "bench-out/bench_kernels/" in capsys.readouterr().out.replace("-\n", "-").replace(
        " ", ""
    )
    script = (BENCH / "bench_kernels.py").read_text()
    assert "from pluginedit.cli import bench" in script and "spec_from_file_location" not in script


def test_default_folder_is_scratch_not_the_committed_results(results, monkeypatch, tmp_path):
    monkeypatch.delenv(results.ENV, raising=False)
    monkeypatch.setattr(
        results, "SCRATCH", tmp_path / "bench-out"
    )  # do not create it in the checkout
    d = results.out_dir(None, "coar")
    assert d == tmp_path / "bench-out" / "coar" and d.is_dir()
    assert d.resolve() != results.COMMITTED.resolve() and results.COMMITTED not in d.parents
    assert results.SCRATCH.name == "bench-out"
    assert "/bench-out/" in (ROOT / ".gitignore").read_text().split()
    monkeypatch.setenv(results.ENV, str(tmp_path / "env"))
    assert results.out_dir(None, "coar") == tmp_path / "env" / "coar"
    assert results.out_dir(str(tmp_path / "given"), "coar") == tmp_path / "given"  # --out as given
    assert results.out_dir("", "coar") == tmp_path / "env" / "coar"


def test_stamp_holds_machine_command_versions_date(results):
    s = results.stamp(["benchmarks/coar.py", "--arch", "vgg", "--out", "a b"])
    assert s["machine"]["cpu"] and s["machine"]["cores"] >= 1 and "gpu" in s["machine"]
    assert s["command"] == "python benchmarks/coar.py --arch vgg --out 'a b'"
    assert {"pluginedit", "torch", "triton", "torch-pruning", "transformers", "numpy"} <= set(
        s["versions"]
    )
    assert s["versions"]["torch"] and s["versions"]["numpy"]
    assert datetime.fromisoformat(s["date"]).utcoffset().total_seconds() == 0
    assert set(s["git"]) == {"commit", "dirty"}
    assert (
        results.command(["/usr/bin/pluginedit", "bench", "kernels"]) == "pluginedit bench kernels"
    )


def test_write_produces_both_files_with_the_stamp(results, tmp_path):
    s = results.write(tmp_path / "sub" / "res.v1", {"rows": [1], "x": 2}, "# Title\n\nbody\n")
    obj = json.loads((tmp_path / "sub" / "res.v1.json").read_text())
    assert obj["stamp"] == s and obj["x"] == 2 and list(obj)[0] == "stamp"
    md = (tmp_path / "sub" / "res.v1.md").read_text()
    assert md.startswith("# Title\n")
    head = md.split("body")[0]
    for key in ("Machine:", "Command:", "Versions:", "Date:", s["command"], s["machine"]["cpu"]):
        assert key in head
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "res.v1.json",
        "res.v1.md",
    ]  # no temp files

    results.write(tmp_path / "rows", [{"a": 1}])  # a list is wrapped, read unwraps it
    assert json.loads((tmp_path / "rows.json").read_text())["stamp"]["command"]
    assert results.read(tmp_path / "rows.json") == [{"a": 1}]
    assert not (tmp_path / "rows.md").exists()

    again = results.read(tmp_path / "sub" / "res.v1.json") | {"x": 3}  # a partial re-run (--only)
    s2 = results.stamp()
    results.write(tmp_path / "sub" / "res.v1", again, None, s2)
    obj = json.loads((tmp_path / "sub" / "res.v1.json").read_text())
    assert obj["x"] == 3 and obj["stamp"]["earlier"] == s and obj["stamp"]["date"] == s2["date"]


def test_an_interrupted_write_leaves_the_old_file(results, tmp_path, monkeypatch):
    results.write(tmp_path / "r", {"v": 1})

    def half_then_interrupt(self, text, *a, **k):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        results.write(tmp_path / "r", {"v": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "r.json").read_text())["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
