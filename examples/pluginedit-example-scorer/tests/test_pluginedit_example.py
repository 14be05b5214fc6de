"""The example plugin package, installed with pip into a temporary folder (never into the
environment: nothing stays after the session), found through its entry points and used by name:
the Wanda scorer against its definition, the shared pass, the statistic's merge and its
all-reduce in two gloo processes against one process, the editors' options, undo and
fallback, and the data-free scorer's need for example inputs."""

from __future__ import annotations

import copy
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import pluginedit as pe
from pluginedit.core import registry
from pluginedit.stats import distributed

PACKAGE = Path(__file__).resolve().parents[1]
DIST = "pluginedit-example-scorer"
SCORERS, EDITORS = ("wanda", "act-rms", "bn-gamma"), ("scale-lowest", "zero-lowest")
RTOL = 1e-6


def _forget_modules() -> None:
    for name in [
        m for m in sys.modules if m == "pluginedit_example" or m.startswith("pluginedit_example.")
    ]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install`` of a copy of the package (so no build/ or egg-info lands in the source
    folder) into a temporary target that is on sys.path (and PYTHONPATH, for subprocesses)
    for this module's tests only."""
    tmp = tmp_path_factory.mktemp("example-plugin")
    src, target = tmp / "src", tmp / "site"
    shutil.copytree(
        PACKAGE, src, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__")
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
    with pytest.MonkeyPatch.context() as mp_:
        mp_.syspath_prepend(str(target))
        mp_.setenv(
            "PYTHONPATH",
            os.pathsep.join([str(target), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        mp_.delenv(registry.AUTOLOAD_ENV, raising=False)
        _forget_modules()
        importlib.invalidate_caches()
        registry.refresh()
        yield target
    _forget_modules()
    importlib.invalidate_caches()
    registry.refresh()


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    ).eval()


def _data(n: int = 240, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g) * 2 + 0.5, torch.arange(n) % 3


def test_found_through_entry_points(installed):
    for kind, names in (("scorer", SCORERS), ("editor", EDITORS)):
        table = registry.plugins(kind)
        for name in names:
            info = table[name]
            assert info.dist == DIST and info.version == "0.1.0" and info.error is None, info
            assert Path(sys.modules[info.obj.__module__].__file__).is_relative_to(installed)
    listing = subprocess.run(
        [sys.executable, "-m", "pluginedit.cli", "plugins"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in SCORERS + EDITORS:
        row = next(line for line in listing.splitlines() if line.startswith(name + " "))
        assert DIST in row and row.endswith("ok"), row
    assert not (PACKAGE / "build").exists() and not list(PACKAGE.glob("*.egg-info"))


def test_wanda_is_its_definition(installed):
    model, (x, y) = _model(), _data()
    scores = pe.score(model, "wanda", data=(x, y), batch_size=64)
    assert (
        list(scores) == ["0", "3", "7"] and scores.scorer == "wanda"
    )  # every conv / linear but the head
    inputs = {"0": x, "3": torch.relu(model[1](model[0](x)))}
    inputs["7"] = model[6](model[5](torch.relu(model[3](inputs["3"]))))
    for path, a in inputs.items():
        w = model.get_submodule(path).weight.detach().double()
        norm = a.double().movedim(1, -1).reshape(-1, w.shape[1]).square().mean(0).sqrt()
        want = (w.abs() * norm.reshape(1, -1, *[1] * (w.ndim - 2))).flatten(1).sum(1)
        torch.testing.assert_close(scores[path].double(), want, rtol=1e-5, atol=0)


def test_scorers_share_one_pass(installed):
    model, data = _model(), _data()
    both = pe.score_many(model, ["wanda", "act-rms", "fidelity"], data=data, batch_size=64)
    for name in ("wanda", "act-rms"):
        alone = pe.score(model, name, data=data, batch_size=64)
        assert dict(both[name]).keys() == dict(alone).keys()
        for path, v in alone.items():
            assert torch.equal(both[name][path], v)


def test_statistic_merges_like_one_pass(installed):
    from pluginedit_example import InputSquares

    a = torch.randn(50, 8, 4, 4, dtype=torch.float64) * 3 + 2
    whole = InputSquares(8)
    whole.update(a)
    parts = [InputSquares(8) for _ in range(3)]
    for part, chunk in zip(parts, (a[:7], a[7:31], a[31:])):
        part.update(chunk)
    merged = parts[0]
    assert merged.merge(parts[1]).merge(parts[2]) is merged
    torch.testing.assert_close(merged.sumsq, whole.sumsq, rtol=RTOL, atol=0)
    assert torch.equal(merged.count, whole.count)
    assert InputSquares(8).merge(copy.deepcopy(whole)).state_dict().keys() == {"sumsq", "count"}
    assert all(torch.is_tensor(v) for v in whole.state_dict().values())
    # a peer as the default all_reduce builds it: a copy of this statistic with the other's state
    peer = copy.deepcopy(InputSquares(8, channel_dim=1))
    peer.load_state_dict(whole.state_dict())
    torch.testing.assert_close(peer.rms(), whole.rms(), rtol=0, atol=0)
    with pytest.raises(pe.InputError, match="cannot merge"):
        whole.merge(InputSquares(4))


def _shard_scores(rank: int) -> dict[str, torch.Tensor]:
    """On each rank: the wanda scores (sharded pass + all-reduce inside pe.score) and the
    statistic all-reduced both ways, over its own shard of the activations."""
    from pluginedit_example import InputSquares

    model, data = _model(), _data()
    out = {f"wanda/{p}": v for p, v in pe.score(model, "wanda", data=data, batch_size=48).items()}
    acts = torch.randn(40, 8, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    own, default = InputSquares(8), InputSquares(8)
    for i in range(4):  # chunk i belongs to rank i mod 2
        if distributed.world() is None or distributed.world().mine(i):
            own.update(acts[10 * i : 10 * i + 10])
            default.update(acts[10 * i : 10 * i + 10])
    comm = distributed.world()
    if comm is not None:
        own.all_reduce(comm)  # InputSquares' override: one sum
        pe.Statistic.all_reduce(default, comm)  # the base class: broadcast and merge
    return out | {
        "sum/sumsq": own.sumsq,
        "sum/count": own.count,
        "merge/sumsq": default.sumsq,
        "merge/count": default.count,
    }


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    registry.refresh()
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        torch.save(_shard_scores(rank), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one(installed, tmp_path):
    want = _shard_scores(0)  # no process group: the whole data in one process
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.keys() == want.keys()
        for key, w in want.items():
            torch.testing.assert_close(
                got[key],
                w,
                rtol=RTOL,
                atol=0,
                msg=lambda m, where=f"rank {rank} {key}": f"{where}: {m}",
            )


def test_scale_lowest_edits_and_undoes_exactly(installed):
    from pluginedit_example import ScaleLowestEditor

    model, data = _model(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = pe.score(model, "wanda", data=data)
    record = pe.edit(model, ScaleLowestEditor(fraction=0.5, factor=0.5), scores, data=data)
    assert record.editor == "scale-lowest" and record.scores == "wanda" and record.reversible
    assert record.semantics == "scaled weight+bias by 0.5" and record.info["scaled"] == 4 + 4 + 8
    assert record.changes["0"] == scores.lowest("0", 4).tolist()
    idx = record.changes["3"]
    torch.testing.assert_close(model[3].weight[idx], before["3.weight"][idx] * 0.5)
    record.undo(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # by name with keyword options, restricted to one layer
    record = pe.edit(model, "scale-lowest", scores, targets=["7"], fraction=0.25)
    assert list(record.changes) == ["7"] and len(record.changes["7"]) == 4
    record.undo(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_editors_without_scores(installed):
    model, data = _model(), _data()
    record = pe.edit(model, "scale-lowest", data=data)  # scores the weights itself
    assert record.scores == "l1" and record.num_changed() == 2 + 2 + 4
    record.undo(model)
    with pytest.raises(pe.InputError, match="zero-lowest needs Scores"):
        pe.edit(model, "zero-lowest", data=data)


def test_options_are_validated(installed):
    from pluginedit_example import ScaleLowestEditor

    assert ScaleLowestEditor().options_dict() == {"fraction": 0.25, "factor": 0.0, "fallback": "l1"}
    for bad, word in (
        ({"fraction": 1.5}, "fraction"),
        ({"fraction": "half"}, "fraction"),
        ({"factor": 1.0}, "factor"),
        ({"fallback": "l3"}, "fallback"),
        ({"fractoin": 0.5}, "fractoin"),
    ):
        with pytest.raises(pe.InputError, match=word):
            ScaleLowestEditor(**bad)
    with pytest.raises(pe.InputError, match="fraction"):
        pe.edit(_model(), "zero-lowest", pe.Scores({"0": torch.ones(8)}, "x"), fraction=0)


def test_zero_lowest_and_data_free_bn_gamma(installed):
    model, data = _model(), _data()
    with pytest.raises(pe.InputError, match="cannot tell the classifier head"):
        pe.score(model, "bn-gamma")
    scores = pe.score(model, "bn-gamma", example_inputs=data[0][:1])
    assert list(scores) == ["0", "3", "7"]
    assert torch.equal(scores["0"], model[1].weight.detach().abs())  # the BatchNorm's |gamma|
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = pe.edit(model, "zero-lowest", scores, fraction=0.5)
    assert record.scores == "bn-gamma" and all(
        float(model[0].weight.detach()[i].abs().sum()) == 0 for i in record.changes["0"]
    )
    record.undo(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
