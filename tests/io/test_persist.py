"""Models in and out: a model defined outside the package is pruned from the CLI, saved without
pickle and reloaded in a fresh process; damaged or foreign files are clear errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pluginedit as pe
from pluginedit import cli
from pluginedit import io as pe_io
from pluginedit.core.errors import InputError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
import custom_models  # noqa: E402

TRUST = ["custom_models:make"]  # a factory outside the allow-list: the tests trust it by name


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights and a small data file of 3-channel 32x32 images."""
    root = tmp_path_factory.mktemp("io")
    model = custom_models.make()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "w.safetensors")
    )
    torch.save(model.state_dict(), root / "w.pt")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 3, 32, 32, generator=g)
    save_file({"x": x, "y": torch.arange(240) % 10}, str(root / "data.safetensors"))
    return root


def _fresh_logits(folder: Path, x_file: Path) -> torch.Tensor:
    """Logits of pe.load(folder) computed in a new Python process."""
    code = (
        "import sys, torch, pluginedit as pe; from safetensors.torch import load_file, save_file;"
        f"m = pe.load({str(folder)!r}, trusted=['custom_models:make']); x = load_file({str(x_file)!r})['x'][:16];"
        f"save_file({{'y': m(x).detach()}}, {str(folder / 'out.safetensors')!r})"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(FIXTURES)},
    )
    from safetensors.torch import load_file

    return load_file(str(folder / "out.safetensors"))["y"]


@pytest.mark.parametrize("weights", ["w.safetensors", "w.pt"])
def test_cli_prunes_saves_and_a_fresh_process_reloads(files, tmp_path, weights, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    out = tmp_path / "pruned"
    rc = cli.main(
        [
            "prune",
            "--model",
            "custom_models:make",
            "--model-args",
            '{"width": 16}',
            "--weights",
            str(files / weights),
            "--data",
            str(files / "data.safetensors"),
            "--scorer",
            "l1",
            "--ratio",
            "0.5",
            "--save",
            str(out),
            "--calib-samples",
            "64",
        ]
    )
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["factory"] == "custom_models:make" and manifest["steps"]
    assert manifest["history"][0]["editor"] == "prune"
    reloaded = pe.load(out, trusted=TRUST)
    dense = pe.load_model("custom_models:make", {"width": 16})
    assert sum(p.numel() for p in reloaded.parameters()) < 0.6 * sum(
        p.numel() for p in dense.parameters()
    )
    fresh = _fresh_logits(out, files / "data.safetensors")
    from safetensors.torch import load_file

    xs = load_file(str(files / "data.safetensors"))["x"][:16]
    with torch.no_grad():
        torch.testing.assert_close(fresh, reloaded(xs), atol=1e-6, rtol=0)


@pytest.fixture()
def saved(tmp_path):
    model = pe.load_model("custom_models:make", {"width": 8})
    x = torch.randn(8, 3, 32, 32)
    scores = pe.score(model, "l1", example_inputs=x[:1])
    rec = pe.edit(model, "prune", scores, example_inputs=x[:1], ratio=0.25)
    folder = pe.save(model, tmp_path / "m", rec)
    return model, folder, x


def test_in_process_round_trip_is_exact(saved):
    model, folder, x = saved
    back = pe.load(folder, trusted=TRUST)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=1e-6, rtol=0)


def test_load_never_unpickles(saved, monkeypatch):
    _, folder, x = saved

    def refuse(*a, **k):
        raise AssertionError("pickle used on the load path")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    pe.load(folder, trusted=TRUST)


def test_malicious_pickle_weights_are_refused(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("open('/tmp/pluginedit_pwned', 'w').write('x')",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"w": Boom()}, f)
    with pytest.raises(InputError, match="weights_only=True"):
        pe_io.load_weights(bad)
    assert not Path("/tmp/pluginedit_pwned").exists()


def _damage(folder: Path, how: str) -> None:
    w, m = folder / "model.safetensors", folder / "manifest.json"
    if how == "truncated":
        w.write_bytes(w.read_bytes()[:-100])
    elif how == "hash":
        data = bytearray(w.read_bytes())
        data[-1] ^= 0xFF
        w.write_bytes(bytes(data))
    elif how == "tampered":
        m.write_text(m.read_text()[:-20])
    elif how == "foreign":
        man = json.loads(m.read_text())
        man["source"]["args"]["width"] = 12
        m.write_text(json.dumps(man))
    elif how == "bad_step":
        man = json.loads(m.read_text())
        man["steps"][0]["idxs"] = [-1]
        m.write_text(json.dumps(man))


@pytest.mark.parametrize(
    "how,match",
    [
        ("truncated", "bytes, the manifest says"),
        ("hash", "SHA-256"),
        ("tampered", "not valid JSON"),
        ("foreign", "another architecture|do not fit"),
        ("bad_step", "step 0 is malformed"),
    ],
)
def test_damaged_saves_are_clear_errors(saved, how, match):
    _, folder, _ = saved
    _damage(folder, how)
    with pytest.raises(InputError, match=match) as e:
        pe.load(folder, trusted=TRUST)
    assert str(folder) in str(e.value)


def test_save_without_a_known_architecture_says_how(tmp_path):
    with pytest.raises(InputError, match="source="):
        pe.save(torch.nn.Linear(2, 2), tmp_path / "x")
