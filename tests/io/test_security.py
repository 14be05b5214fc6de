"""Loading a saved folder runs no code it was not told to trust: real payloads in the manifest
(each would create a canary file or import a module if it ran), symbolic links, oversized and
hostile JSON, tampered replay steps, pinned saves, dtype and history through save and load."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import pluginedit as pe
from pluginedit.contrib import zoo
from pluginedit.core.errors import InputError
from pluginedit.core.record import EditRecord
from pluginedit.graph.replay import replay_steps
from pluginedit.io import manifest as manifest_module

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))


def _saved(folder: Path) -> Path:
    """A zoo VGG with half its channels pruned, saved (allow-listed constructor, real steps)."""
    model = zoo.build("vgg", 1, 4, widths=(4, 8), hidden=8)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pe.edit(model, "prune", pe.score(model, "l1", example_inputs=x), example_inputs=x, ratio=0.5)
    return pe.save(model, folder)


def _edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    man = json.loads(path.read_text())
    change(man)
    path.write_text(json.dumps(man))


@pytest.fixture()
def canary(tmp_path):
    """A path that a payload creates if it runs; the test asserts it never exists."""
    path = tmp_path / "outside" / "CANARY"
    path.parent.mkdir()
    yield path
    assert not path.exists(), "a payload ran"


def _payloads(canary: Path) -> dict[str, tuple[str, dict]]:
    outside = canary.parent
    script = outside / "payload.py"
    script.write_text(f"open({str(canary)!r}, 'w').write('ran')\n")

    class Boom:
        def __reduce__(self):
            return (exec, (f"open({str(canary)!r}, 'w').write('ran')",))

    pickled = outside / "evil.pt"
    pickled.write_bytes(pickle.dumps({"w": Boom()}))
    secret = outside / "secret.txt"
    secret.write_text("SECRET-LINE 1 2 3\n")
    return {
        "os-system": ("os:system", {"command": f"touch {canary}"}),
        "subprocess-run": ("subprocess:run", {"args": ["touch", str(canary)]}),
        "runpy": ("runpy:run_path", {"path_name": str(script)}),
        "torch-load": ("torch:load", {"f": str(pickled), "weights_only": False}),
        "numpy-loadtxt": ("numpy:loadtxt", {"fname": str(secret), "dtype": "str"}),
        "builtins-exec": ("builtins:exec", {"source": f"open({str(canary)!r}, 'w')"}),
        "pluginedit-internal": ("pluginedit.io.models:import_factory", {"spec": "os:system"}),
        "torch-nn-function": ("torch.nn.functional:relu", {"input": 1}),
        "torch-nn-not-a-module": ("torch.nn:init", {}),
    }


@pytest.mark.parametrize(
    "name",
    [
        "os-system",
        "subprocess-run",
        "runpy",
        "torch-load",
        "numpy-loadtxt",
        "builtins-exec",
        "pluginedit-internal",
        "torch-nn-function",
        "torch-nn-not-a-module",
    ],
)
def test_manifest_payloads_are_refused_and_never_run(tmp_path, canary, name):
    folder = _saved(tmp_path / "m")
    spec, args = _payloads(canary)[name]
    _edit_manifest(
        folder, lambda m: m.update(source={"kind": "factory", "factory": spec, "args": args})
    )
    with pytest.raises(InputError, match=f"model factory '{spec}' is not trusted.*trusted=") as e:
        pe.load(folder)
    assert "SECRET" not in str(e.value)


def test_a_factory_module_outside_the_allow_list_is_never_imported(tmp_path, canary, monkeypatch):
    """A module whose import alone would run code is not imported unless the caller trusts it."""
    mod = tmp_path / "pe_canary_mod.py"
    mod.write_text(
        f"open({str(canary)!r}, 'w').write('imported')\n"
        "import torch\ndef make():\n    return torch.nn.Linear(2, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "m"
    pe.save(
        nn.Linear(2, 2),
        folder,
        source={"kind": "factory", "factory": "pe_canary_mod:make", "args": {}},
    )
    with pytest.raises(InputError, match="'pe_canary_mod:make' is not trusted"):
        pe.load(folder)
    assert "pe_canary_mod" not in sys.modules
    assert not canary.exists()
    back = pe.load(folder, trusted=["pe_canary_mod:make"])  # trusting it is the caller's call
    assert isinstance(back, nn.Linear) and canary.exists()
    canary.unlink()
    sys.modules.pop("pe_canary_mod", None)


def test_trusted_must_be_a_list_of_specs(tmp_path):
    folder = _saved(tmp_path / "m")
    with pytest.raises(InputError, match="trusted must be a list"):
        pe.load(folder, trusted="custom_models:make")
    with pytest.raises(InputError, match="trusted factory 'not a spec' must look like"):
        pe.load(folder, trusted=["not a spec"])


def test_allow_listed_constructors_load_without_trust(tmp_path):
    folder = _saved(tmp_path / "zoo")
    assert pe.load(folder) is not None
    pe.save(
        pe.load_model("torch.nn:Linear", {"in_features": 3, "out_features": 2}), tmp_path / "nn"
    )
    assert pe.load(tmp_path / "nn").weight.shape == (2, 3)


@pytest.mark.parametrize(
    "cls,config,match",
    [
        ("AutoTokenizer", {}, "'AutoTokenizer' is not a transformers model class"),
        ("pipeline", {}, "'pipeline' is not a transformers model class"),
        ("os.system", {}, "is not a transformers model class"),
        (
            "BertModel",
            {"attn_implementation": "kernels-community/flash-attn"},
            "attn_implementation",
        ),
        ("BertModel", {"_attn_implementation": "kernels-community/x"}, "_attn_implementation"),
        ("BertModel", ["not", "a", "dict"], "needs a config object"),
    ],
)
def test_transformers_sources_build_only_model_classes_from_config(tmp_path, cls, config, match):
    pytest.importorskip("transformers")
    folder = _saved(tmp_path / "m")
    _edit_manifest(
        folder, lambda m: m.update(source={"kind": "transformers", "class": cls, "config": config})
    )
    with pytest.raises(InputError, match=match):
        pe.load(folder)


def test_transformers_remote_code_map_is_ignored(tmp_path, canary, monkeypatch):
    """``auto_map`` names remote code; building from a concrete class never reads it."""
    transformers = pytest.importorskip("transformers")
    (tmp_path / "pe_remote.py").write_text(f"open({str(canary)!r}, 'w').write('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = transformers.BertConfig(
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        vocab_size=16,
    ).to_dict()
    config["auto_map"] = {"AutoModel": "pe_remote.Evil"}
    model = transformers.BertModel(transformers.BertConfig.from_dict(config))
    pe.save(
        model,
        tmp_path / "m",
        source={"kind": "transformers", "class": "BertModel", "config": config},
    )
    back = pe.load(tmp_path / "m")
    assert isinstance(back, transformers.BertModel) and "pe_remote" not in sys.modules


# -- files: only regular files inside the folder ---------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "manifest.json"])
def test_symlinked_files_are_never_followed(tmp_path, name):
    folder = _saved(tmp_path / "m")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = outside / name
    target.write_bytes((folder / name).read_bytes())  # identical content, hash still matches
    (folder / name).unlink()
    (folder / name).symlink_to(target)
    with pytest.raises(InputError, match=f"{name} is a symbolic link"):
        pe.load(folder)


def test_a_directory_in_place_of_a_file_is_named(tmp_path):
    folder = _saved(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()
    with pytest.raises(InputError, match="model.safetensors"):
        pe.load(folder)


def test_oversized_manifest_is_refused_before_parsing(tmp_path, monkeypatch):
    folder = _saved(tmp_path / "m")
    monkeypatch.setattr(manifest_module, "MANIFEST_LIMIT", 1000)
    _edit_manifest(folder, lambda m: m.update(padding="x" * 2000))
    with pytest.raises(InputError, match="manifest.json: .* bytes, more than the 1000 expected"):
        pe.load(folder)


def test_weights_larger_than_the_manifest_says_are_refused(tmp_path):
    folder = _saved(tmp_path / "m")
    with open(folder / "model.safetensors", "ab") as f:
        f.write(b"\0" * 64)
    with pytest.raises(InputError, match="model.safetensors: .* bytes, more than the .* expected"):
        pe.load(folder)


@pytest.mark.parametrize(
    "text,match",
    [
        ('{"format": ' + "9" * 5000 + "}", "not valid JSON.*5000 digits"),
        ("[" * 200_000 + "]" * 200_000, "not valid JSON"),
        ('{"format": NaN}', "not valid JSON.*NaN"),
        (b'{"format": "\xff\xfe"}', "not valid JSON"),
        ("[]", "expected a JSON object"),
    ],
)
def test_hostile_json_is_a_clear_error(tmp_path, text, match):
    folder = _saved(tmp_path / "m")
    path = folder / "manifest.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=match):
        pe.load(folder)


# -- replay steps: each validated against the module it names -------------------------------------


def _steps(folder: Path) -> list[dict]:
    return json.loads((folder / "manifest.json").read_text())["steps"]


def _bn_step(steps: list[dict]) -> int:
    return next(i for i, s in enumerate(steps) if s.get("fn") == "prune_batchnorm_out_channels")


@pytest.mark.parametrize(
    "how,match",
    [
        (
            "bn-index",
            r"step \d+ \(prune_batchnorm_out_channels on 'features\.\d+'\) removes index 99",
        ),
        ("root", r"step 0 names module '', .*the model itself"),
        ("relu", r"step 0 applies prune_conv_out_channels to 'features.2', a ReLU"),
        ("kind", r"step 0 applies prune_linear_out_channels to 'features.0', a Conv2d"),
        ("duplicate", r"step 0 \(prune_conv_out_channels on 'features.0'\) lists an index twice"),
        ("all", r"step 0 \(prune_conv_out_channels on 'features.0'\) removes all 4 channels"),
        ("after-earlier", r"removes index 2, but the layer has 2 at that point"),
        ("unknown-fn", r"unknown pruning function 'prune_parameter_out_channels'"),
        ("not-tp", r"unknown pruning function 'prune_conv_out_channels_evil'"),
        ("attr", r"sets num_attention_heads=4 on 'features.0', which has no such attribute"),
        ("attr-name", r"sets attributes \['forward'\] that are not replayable"),
    ],
)
def test_tampered_steps_are_a_bad_manifest_naming_the_step(tmp_path, how, match):
    folder = _saved(tmp_path / "m")
    steps = _steps(folder)
    first = {"module": "features.0", "fn": "prune_conv_out_channels"}
    tampered = {
        "bn-index": lambda: steps[: _bn_step(steps)] + [{**steps[_bn_step(steps)], "idxs": [99]}],
        "root": lambda: [{**first, "module": "", "idxs": [0]}],
        "relu": lambda: [{**first, "module": "features.2", "idxs": [0]}],
        "kind": lambda: [{**first, "fn": "prune_linear_out_channels", "idxs": [0]}],
        "duplicate": lambda: [{**first, "idxs": [1, 1]}],
        "all": lambda: [{**first, "idxs": [0, 1, 2, 3]}],
        "after-earlier": lambda: [{**first, "idxs": [0, 1]}, {**first, "idxs": [2]}],
        "unknown-fn": lambda: [{**first, "fn": "prune_parameter_out_channels", "idxs": [0]}],
        "not-tp": lambda: [{**first, "fn": "prune_conv_out_channels_evil", "idxs": [0]}],
        "attr": lambda: [{"module": "features.0", "attrs": {"num_attention_heads": 4}}],
        "attr-name": lambda: [{"module": "features.0", "attrs": {"forward": 1}}],
    }[how]()
    _edit_manifest(folder, lambda m: m.update(steps=tampered))
    with pytest.raises(InputError, match=r"manifest.json: bad step: step \d+ ") as e:
        pe.load(folder)
    assert re.search(match, str(e.value)), str(e.value)


def test_a_bad_step_changes_nothing_before_it_is_reported():
    model = zoo.build("vgg", 1, 4, widths=(4, 8), hidden=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = [
        {"module": "features.0", "fn": "prune_conv_out_channels", "idxs": [0]},
        {"module": "features.1", "fn": "prune_batchnorm_out_channels", "idxs": [7]},
    ]
    with pytest.raises(InputError, match="step 1 .* removes index 7, but the layer has 4"):
        replay_steps(model, steps)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _convnext_steps() -> tuple[nn.Module, list[dict]]:
    """A small transformers ConvNeXt pruned by l1: its layer scales are bare nn.Parameters that
    torch-pruning prunes, recorded as parameter steps."""
    from pluginedit.contrib import vision_zoo

    model, x = vision_zoo.build("convnext")
    pe.edit(model, "prune", pe.score(model, "l1", example_inputs=x), example_inputs=x, ratio=0.5)
    return model, list(model.__dict__["_pluginedit_steps"])


@pytest.fixture(scope="module")
def convnext_save(tmp_path_factory):
    model, _ = _convnext_steps()
    return pe.save(model, tmp_path_factory.mktemp("convnext") / "m")


def test_bare_parameters_are_replayed_steps(convnext_save, tmp_path):
    steps = _steps(convnext_save)
    scales = [s for s in steps if "parameter" in s]
    assert scales and all(s["parameter"].endswith("layer_scale_parameter") for s in scales)
    assert all(s["dim"] == 0 and s["idxs"] for s in scales)
    back = pe.load(convnext_save)
    p = back.get_parameter(steps[_scale_step(steps)]["parameter"])
    assert isinstance(p, nn.Parameter) and p.shape == (8,)  # 16 channels, half removed


def _scale_step(steps: list[dict]) -> int:
    """The step pruning the first stage's layer scale (16 channels, 8 removed)."""
    return next(i for i, s in enumerate(steps) if "stages.0." in s.get("parameter", ""))


def _copy_save(src, folder):
    """A writable copy of a pe.save folder (the files only), to tamper with."""
    folder.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.parametrize(
    "how,match",
    [
        ("missing", r"prunes parameter 'convnext.nope.layer_scale', which the model does not"),
        ("module", r"prunes parameter 'convnext.encoder', which the model does not have"),
        ("norm", r"prunes parameter 'convnext.embeddings.layernorm.weight' of a \w*LayerNorm"),
        ("layer", r"prunes parameter 'classifier.weight' of a Linear directly"),
        ("dim", r"prunes dimension 1 of parameter '.*layer_scale_parameter', which has 1 dim"),
        ("index", r"\(parameter '.*layer_scale_parameter', dimension 0\) removes index 99, but"),
        ("duplicate", r"\(parameter '.*', dimension 0\) lists an index twice"),
        ("all", r"\(parameter '.*', dimension 0\) removes all 16 channels"),
        ("after-earlier", r"removes index 9, but the parameter has 8 at that point"),
    ],
)
def test_tampered_parameter_steps_are_a_bad_manifest(tmp_path, convnext_save, how, match):
    folder = _copy_save(convnext_save, tmp_path / "m")
    steps = _steps(folder)
    i = _scale_step(steps)
    step = steps[i]
    tampered = {
        "missing": {**step, "parameter": "convnext.nope.layer_scale"},
        "module": {**step, "parameter": "convnext.encoder"},
        "norm": {**step, "parameter": "convnext.embeddings.layernorm.weight"},
        "layer": {**step, "parameter": "classifier.weight"},
        "dim": {**step, "dim": 1},
        "index": {**step, "idxs": [99]},
        "duplicate": {**step, "idxs": [1, 1]},
        "all": {**step, "idxs": list(range(16))},
        "after-earlier": {**step, "idxs": [9]},
    }[how]
    extra = [{**step, "idxs": list(range(8))}] if how == "after-earlier" else []
    _edit_manifest(folder, lambda m: m.update(steps=steps[:i] + extra + [tampered]))
    with pytest.raises(InputError, match=r"manifest.json: bad step: step \d+ ") as e:
        pe.load(folder)
    assert re.search(match, str(e.value)), str(e.value)


@pytest.mark.parametrize("bad", [{"dim": -1}, {"dim": "0"}, {"dim": True}, {"parameter": 3}])
def test_malformed_parameter_steps_are_refused_before_anything_is_built(
    tmp_path, convnext_save, bad
):
    folder = _copy_save(convnext_save, tmp_path / "m")
    steps = _steps(folder)
    i = _scale_step(steps)
    _edit_manifest(folder, lambda m: m.update(steps=[{**steps[i], **bad}]))
    with pytest.raises(InputError, match=r"step 0 is malformed \(a parameter step needs"):
        pe.load(folder)


def test_a_bad_parameter_step_changes_nothing_before_it_is_reported():
    from pluginedit.contrib import vision_zoo

    _, steps = _convnext_steps()
    model, _ = vision_zoo.build("convnext")
    i = _scale_step(steps)
    held = dict(model.named_parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = steps[: i + 1] + [{**steps[i], "idxs": [0, 99]}]
    with pytest.raises(InputError, match=rf"step {i + 1} \(parameter .* removes index 99"):
        replay_steps(model, bad)
    assert all(held[k] is p for k, p in model.named_parameters())  # nothing replaced
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- pinning, dtype, history ----------------------------------------------------------------------


def test_a_pinned_save_loads_only_with_its_manifest(tmp_path):
    folder = _saved(tmp_path / "m")
    pin = pe.io.digest(folder)
    assert pin == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    assert pe.load(folder, sha256=pin.upper()) is not None
    _edit_manifest(folder, lambda m: m["history"].append({"editor": "forged"}))
    with pytest.raises(InputError, match="is not the pinned"):
        pe.load(folder, sha256=pin)
    with pytest.raises(InputError, match="sha256 must be 64 hexadecimal digits"):
        pe.load(folder, sha256="abc")


def test_swapping_weights_and_rehashing_is_caught_by_the_pin(tmp_path):
    """An attacker who rewrites the weights and the weights hash still changes the manifest."""
    folder = _saved(tmp_path / "m")
    pin = pe.io.digest(folder)
    state = {k: torch.zeros_like(v) for k, v in pe.load(folder).state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    data = (folder / "model.safetensors").read_bytes()
    _edit_manifest(
        folder,
        lambda m: m["weights"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest()),
    )
    assert pe.load(folder) is not None  # unpinned: a consistent save
    with pytest.raises(InputError, match="is not the pinned"):
        pe.load(folder, sha256=pin)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtype_survives_save_and_load(tmp_path, dtype):
    model = zoo.build("vgg", 1, 4, widths=(4, 8), hidden=8).to(dtype)
    pe.save(model, tmp_path / "m")
    back = pe.load(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["dtype"] == str(dtype)[6:]
    assert all(
        a.dtype == b.dtype and torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), back.state_dict().values())
    )


def test_module_state_versions_survive_save_and_load(tmp_path):
    """Modules whose loader reads the state dict's version (torchvision's MNASNet does) load."""
    folder = tmp_path / "m"
    model = pe.load_model("custom_models:versioned", {})
    pe.save(model, folder)
    back = pe.load(folder, trusted=["custom_models:versioned"])
    assert back.seen_version == 2


def test_records_of_another_model_are_refused_and_history_is_the_models_own(tmp_path):
    x = torch.randn(2, 1, 8, 8)
    a, b = (zoo.build("vgg", 1, 4, widths=(4, 8), hidden=8) for _ in range(2))
    rec = pe.edit(a, "prune", pe.score(a, "l1", example_inputs=x), example_inputs=x, ratio=0.5)
    with pytest.raises(
        InputError, match=r"records\[0\] \(editor 'prune'\) was not made on this model"
    ):
        pe.save(b, tmp_path / "b", rec)
    assert not (tmp_path / "b").exists()
    with pytest.raises(InputError, match="not made on this model"):
        pe.save(a, tmp_path / "a", EditRecord("prune"))
    pe.save(a, tmp_path / "a", rec)
    back = pe.load(tmp_path / "a")
    rec2 = pe.edit(
        back, "mask", pe.score(back, "l1", example_inputs=x), example_inputs=x, ratio=0.25
    )
    pe.save(back, tmp_path / "again", rec2)
    history = json.loads((tmp_path / "again" / "manifest.json").read_text())["history"]
    assert [h["editor"] for h in history] == ["prune", "mask"]


def test_save_onto_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    with pytest.raises(InputError, match="it is a file, and a save is a folder"):
        pe.save(zoo.build("vgg", 1, 4, widths=(4, 8), hidden=8), target)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    "text", ['{"scorer": "l1", "meta": {"n": ' + "9" * 5000 + "}}", "[" * 100_000]
)
def test_hostile_scores_json_is_a_clear_error(tmp_path, text):
    pe.Scores({"0": torch.ones(4)}, "l1").save(tmp_path / "run")
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(InputError, match="run.json: not valid JSON"):
        pe.Scores.load(tmp_path / "run")


def test_cli_load_trusts_only_what_it_is_told(tmp_path, monkeypatch, capsys):
    """`--load DIR` refuses a factory outside the allow-list (exit 2, nothing imported) until
    `--trust` names it; `--sha256` pins the save."""
    from pluginedit import cli

    canary = tmp_path / "CANARY"
    (tmp_path / "pe_cli_mod.py").write_text(
        f"open({str(canary)!r}, 'w').write('imported')\n"
        "from pluginedit.contrib import zoo\n"
        "def make(**kw):\n    return zoo.build('vgg', 1, 10, widths=(4, 8), hidden=8)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "m"
    pe.save(
        zoo.build("vgg", 1, 10, widths=(4, 8), hidden=8),
        folder,
        source={"kind": "factory", "factory": "pe_cli_mod:make", "args": {}},
    )
    common = [
        "score",
        "--load",
        str(folder),
        "--data",
        "digits",
        "--calib-samples",
        "32",
        "--out",
        str(tmp_path / "s"),
    ]
    assert cli.main(common) == 2
    assert "--trust pe_cli_mod:make" in capsys.readouterr().err
    assert not canary.exists() and "pe_cli_mod" not in sys.modules
    assert cli.main(common + ["--trust", "pe_cli_mod:make", "--sha256", "0" * 64]) == 2
    assert "is not the pinned" in capsys.readouterr().err and not canary.exists()
    pin = pe.io.digest(folder)
    assert cli.main(common + ["--trust", "pe_cli_mod:make", "--sha256", pin]) == 0
    assert canary.exists() and list(tmp_path.glob("s*.safetensors"))
    sys.modules.pop("pe_cli_mod", None)


def test_cli_model_from_the_current_folder(tmp_path, monkeypatch, capsys):
    """`--model mypkg.nets:make` finds `mypkg/` in the current folder, as a user expects."""
    from pluginedit import cli

    pkg = tmp_path / "mypkg_cwd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "from pluginedit.contrib import zoo\n"
        "def make():\n    return zoo.build('vgg', 1, 10, widths=(4, 8), hidden=8)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    rc = cli.main(
        [
            "score",
            "--model",
            "mypkg_cwd.nets:make",
            "--data",
            "digits",
            "--calib-samples",
            "32",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    sys.modules.pop("mypkg_cwd.nets", None)
    sys.modules.pop("mypkg_cwd", None)
