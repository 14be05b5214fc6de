"""Spurious-feature evidence, one command:  python benchmarks/spurious.py

A Fashion-MNIST VGG trained with a 4 px checkerboard on 95 % of class 0's training images and on
no other class (``contrib.backdoor.spurious_model``). The clean / spurious gap: class-0 accuracy
without and with the artefact, and the rate at which other classes' images are called class 0
without and with it (10k test split). Rectification from n pairs of other-class training images
(with artefact -> without, their true labels). Writes spurious.{json,md} to --out (default: a scratch
folder, see benchmarks/_results.py; --out benchmarks/results updates the committed results)."""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import _results  # the helper beside this script
import torch

import pluginedit as pe
from pluginedit.contrib import backdoor, data
from pluginedit.core.errors import InputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pairs(bundle, trigger, n):
    other = bundle.train.subset(n, exclude=[0], seed=1)
    return pe.Pairs(other.x, trigger.apply(other.x), other.y)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=None, help=_results.out_help("spurious"))
    args = ap.parse_args(argv)
    out = _results.out_dir(args.out, "spurious")
    torch.manual_seed(0)
    bundle = data.load_dataset("fashion-mnist", DATA)
    trigger = backdoor.calibrated(bundle)
    model = backdoor.spurious_model("vgg", bundle, cls=0, trigger=trigger).eval()
    calib = bundle.train.subset(2048, seed=0)
    rows = [{"method": "spurious model", "n": 0} | backdoor.spurious_gap(model, bundle, 0, trigger)]
    print(rows[-1], flush=True)
    for name, n, opts in (
        ("static rank-one", 1, {}),
        ("dynamic rectify", 1, {}),
        ("dynamic rectify", 20, {}),
    ):
        m, t = copy.deepcopy(model), time.time()
        editor = "rank-one" if name.startswith("static") else "rectify"
        try:
            pe.edit(m, editor, data=calib, pairs=pairs(bundle, trigger, n), **opts)
            rows.append(
                {"method": name, "n": n, "seconds": time.time() - t}
                | backdoor.spurious_gap(m, bundle, 0, trigger)
            )
        except InputError as e:
            rows.append({"method": name, "n": n, "error": str(e)})
        print(rows[-1], flush=True)
    lines = [
        "# Spurious feature on Fashion-MNIST class 0 (VGG)",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads. Command: `python benchmarks/spurious.py`",
        "",
        "| method | n | class-0 acc clean | class-0 acc with artefact | other->0 clean | other->0 with artefact |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['n']} | failed: {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['method']} | {r['n']} | {r['clean_acc']:.4f} | {r['artefact_acc']:.4f} | "
                f"{r['clean_fpr']:.4f} | {r['artefact_fpr']:.4f} |"
            )
    _results.write(out / "spurious", rows, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
