"""Distributed collection: two gloo processes on the CPU, each reading its shard, give what one
process gives, to 1e-6 relative: the scores of every data scorer on the digits VGG (statistics,
Taylor's gradients, COAR's prior points and masks), COAR's saved AblationSums, and every
statistic's ``all_reduce`` with interleaved and with empty shards (a non-additive statistic goes
through the default broadcast-and-merge). The CLI under ``torchrun --nproc_per_node 2`` writes
the scores file the one-process command writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import pluginedit as pe
from pluginedit.contrib import data, train
from pluginedit.core import registry
from pluginedit.core.errors import InputError
from pluginedit.scorers.coar import estimate, labelled
from pluginedit.stats import (
    AblationSums,
    ChannelMoments,
    ClassMaps,
    ClassMoments,
    Gram,
    Statistic,
    distributed,
)

RTOL = 1e-6
SHARDS = {"interleaved": ([0, 2], [1, 3]), "one empty": ([0, 1, 2, 3], [])}  # chunks of rank 0, 1


class RunningMax(Statistic):
    """Not a sum (merge takes the maximum): a stand-in for a third-party statistic, which
    reaches every rank through ``Statistic.all_reduce``'s broadcast-and-merge."""

    def __init__(self, channels: int):
        self.value = torch.full((channels,), float("-inf"), dtype=torch.float64)

    def update(self, x, labels=None):
        self.value = torch.maximum(self.value, x.double().amax((0, 2, 3)))

    def merge(self, other):
        self.value = torch.maximum(self.value, other.value)
        return self

    def state_dict(self):
        return {"value": self.value}


def _statistics(chunks) -> dict[str, torch.Tensor]:
    """Every built-in statistic (and RunningMax) over the given chunks of one fixed data set,
    all-reduced when a process group is up; returned as the quantities scorers read."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 5, 5, generator=g) * 2 + 7, torch.arange(24) % 3
    masks, outs = torch.rand(32, 6, generator=g) > 0.3, torch.randn(32, 4, generator=g)
    s = {
        "moments": ChannelMoments(3, 3),
        "witness": ClassMoments(3, 3),
        "maps": ClassMaps(3, 3, full=True),
        "gram": Gram(27, kernel_size=3, padding=1),
        "max": RunningMax(3),
        "ablation": AblationSums(6, 4, folds=3),
    }
    for i in chunks:
        xs, ys = x[6 * i : 6 * i + 6], y[6 * i : 6 * i + 6]
        for key in ("moments", "witness", "maps"):
            s[key].update(xs, ys)
        s["gram"].update(xs)
        s["max"].update(xs)
        s["ablation"].update(masks[8 * i : 8 * i + 8], outs[8 * i : 8 * i + 8], first=8 * i)
    distributed.all_reduce(s.values())
    sums, centre = s["witness"].centred()
    return {
        "moments.count": s["moments"].count,
        "moments.mean": s["moments"].mean,
        "moments.var": s["moments"].variance(),
        "witness.count": s["witness"].count,
        "witness.sums": sums,
        "witness.centre": centre,
        "maps.means": s["maps"].means(),
        "maps.var": s["maps"].variances(),
        "maps.cov": s["maps"].covariances(),
        "gram.count": s["gram"].count,
        "gram.mean": s["gram"].mean,
        "gram.cov": s["gram"].covariance(),
        "max": s["max"].value,
    } | {f"ablation.{k}": v for k, v in s["ablation"].state_dict().items()}


def _scores(resume: Path) -> dict[str, torch.Tensor]:
    """Every data scorer's scores on the digits VGG from one score_many pass (batches of 96 over
    the first 1000 samples: 11 batches, the last short), and COAR with the gradient prior."""
    digits = data.load_digits()
    model = train.pretrained("vgg", digits)
    scorers = [registry.get_scorer(n) for n in ("witness", "tvs", "fidelity", "l1")]
    scorers += [
        registry.get_scorer("taylor", max_samples=1000),
        registry.get_scorer(
            "coar", masks=48, examples=16, prior_points=6, chunk=4, resume=str(resume)
        ),
    ]
    got = pe.score_many(model, scorers, data=digits.train, batch_size=96, max_samples=1000)
    out = {f"{name}/{path}": v for name, s in got.items() for path, v in s.items()}
    loader = DataLoader(TensorDataset(digits.train.x[:1000], digits.train.y[:1000]), batch_size=96)
    out |= {f"loader/{p}": v for p, v in pe.score(model, "witness", data=loader).items()}
    shuffled = DataLoader(
        TensorDataset(digits.train.x, digits.train.y), batch_size=96, shuffle=True
    )
    shuffled.sampler.generator = None  # an unseeded shuffle
    if distributed.world() is not None:  # every rank refuses, none hangs
        with pytest.raises(InputError, match="shuffling DataLoader"):
            pe.score(model, "witness", data=shuffled)
    x, y = labelled(model, digits.train, digits.num_classes, 12)
    att = estimate(
        model,
        x,
        y,
        ["features.0", "features.3"],
        n_masks=24,
        prior="grad",
        prior_points=3,
        estimator="ols",
        chunk=4,
        block=8,
    )
    return out | {"coar-grad-ols/w": att.w, "coar-grad-ols/b": att.b}


def _everything(resume: Path, rank: int) -> dict:
    return {"scores": _scores(resume)} | {
        name: _statistics(chunks[rank]) for name, chunks in SHARDS.items()
    }


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        torch.save(
            _everything(Path(out) / "coar-two.safetensors", rank), Path(out) / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def _assert_close(got: dict, want: dict, what: str) -> None:
    """Elementwise within RTOL; entries that are round-off zeros (a dead unit's score) are held
    to 1e-9 of their tensor's largest entry instead."""
    assert got.keys() == want.keys(), what
    for key, w in want.items():
        g = got[key]
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what} {key}"
        floor = 1e-9 * float(w[torch.isfinite(w)].abs().max()) if torch.isfinite(w).any() else 0.0
        torch.testing.assert_close(
            g, w, rtol=RTOL, atol=floor, equal_nan=True, msg=lambda m: f"{what} {key}: {m}"
        )


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path, digits_vgg):
    """The reference is computed in this process, with no process group."""
    ref = _everything(tmp_path / "coar-one.safetensors", 0) | {
        name: _statistics(chunks[0] + chunks[1]) for name, chunks in SHARDS.items()
    }
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for part in ref:
            _assert_close(got[part], ref[part], f"rank {rank}, {part}:")
    layers = {
        name: sum(k.startswith(name + "/") for k in ref["scores"])
        for name in ("coar", "witness", "taylor")
    }
    assert layers["coar"] == layers["witness"] == layers["taylor"] == 5  # every layer but the head
    for p in [
        k.split("/", 1)[1] for k in ref["scores"] if k.startswith("loader/")
    ]:  # a DataLoader = the tensors
        torch.testing.assert_close(
            ref["scores"][f"loader/{p}"], ref["scores"][f"witness/{p}"], rtol=1e-6, atol=0
        )
    # COAR's sums, saved by rank 0 after each block, are the one-process sums
    _assert_close(
        load_file(tmp_path / "coar-two.safetensors"),
        load_file(tmp_path / "coar-one.safetensors"),
        "COAR sums:",
    )
    assert float(load_file(tmp_path / "coar-two.safetensors")["count"].sum()) == 48


def test_outside_a_group_nothing_is_sharded(digits):
    assert distributed.world() is None and distributed.is_main()
    with distributed.single_process():
        assert distributed.world() is None


ARGS = [
    "score",
    "--data",
    "digits",
    "--scorer",
    "witness",
    "--scorer",
    "fidelity",
    "--scorer",
    "tvs",
    "--scorer",
    "coar",
    "-o",
    "coar.masks=32",
    "-o",
    "coar.examples=8",
    "-o",
    "coar.prior_points=4",
]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_cli_score_under_torchrun_writes_the_same_scores(tmp_path, digits_vgg):
    env = {**os.environ, "PLUGINEDIT_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "pluginedit.cli", *ARGS, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            "torchrun",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "pluginedit.cli",
            *ARGS,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("scored with witness") == 1  # rank 0 alone prints
    for name in ("witness", "fidelity", "tvs", "coar"):
        _assert_close(
            load_file(tmp_path / f"two.{name}.safetensors"),
            load_file(tmp_path / f"one.{name}.safetensors"),
            f"CLI {name}:",
        )
    assert sorted(p.name for p in tmp_path.glob("two.*")) == sorted(
        p.name.replace("one", "two") for p in tmp_path.glob("one.*")
    )


def test_ols_with_fewer_masks_than_components_is_the_minimum_norm_solution():
    """Underdetermined OLS must not depend on a pivoted solver's choices (they change with the
    thread count, so ranks and reruns disagreed): it is the minimum-norm least-squares fit."""
    g = torch.Generator().manual_seed(1)
    masks, y = (
        torch.rand(12, 30, generator=g) > 0.2,
        torch.randn(12, 3, generator=g, dtype=torch.float64),
    )
    sums = AblationSums(30, 3)
    sums.update(masks, y)
    w, b = sums.least_squares(0.0)
    x1 = torch.cat([masks.double(), torch.ones(12, 1, dtype=torch.float64)], 1)
    want = torch.linalg.pinv(x1) @ y  # min-norm solution from the rows themselves
    torch.testing.assert_close(torch.cat([w, b[None]]), want, rtol=1e-8, atol=1e-10)
