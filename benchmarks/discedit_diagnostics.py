"""Diagnostics for benchmarks/discedit.py (not part of its acceptance numbers). Accuracy without
fine-tuning on a 3000-sample holdout of the *train* split (disjoint from the 1500 statistics
samples), never on the test split.

    # witness variants (hook point, features, method; layer-by-layer "sp:" or one-shot) vs baselines
    python benchmarks/discedit_diagnostics.py variants vgg,resnet 0.1,0.2 \
        "l1,random,taylor,sp:,sp:hook=act,sp:features=linear,sp:method=mpm,witness:hook=act"
    # the same pruned models before and after re-estimating only the BatchNorm statistics
    python benchmarks/discedit_diagnostics.py bnrecal vgg,resnet 0.2,0.45

Prints its rows to stdout; writes no files.
"""

import argparse
import copy

import torch
from discedit import params, prunable_layers, prune_with

from pluginedit import report
from pluginedit.contrib import data, train
from pluginedit.contrib.data import Split
from pluginedit.editors.common.bnrecal import recalibrate_bn

N_STATS = 1500


def holdout():
    """Statistics samples and a disjoint train holdout (seeded)."""
    fm = data.load_dataset("fashion-mnist", "/work/shared/data")
    perm = torch.randperm(len(fm.train), generator=torch.Generator().manual_seed(11))
    take = lambda a, b: Split(fm.train.x[perm[a:b]], fm.train.y[perm[a:b]])  # noqa: E731
    return fm, take(0, N_STATS), take(N_STATS, N_STATS + 3000)


def parse(config: str) -> tuple[str, dict]:
    """ "sp:k=v;k=v" -> ("discedit-sp", {...}); "scorer:k=v" -> ("scorer", {...})."""
    kind, _, rest = config.partition(":")
    opts = dict(kv.split("=") for kv in rest.split(";")) if rest else {}
    return ("discedit-sp" if kind == "sp" else kind), opts


def main(
    mode: str, archs: str, ratios: str, configs: str = "l1,random,sp:,sp:features=linear"
) -> None:
    torch.set_num_threads(1)
    fm, stats, hold = holdout()
    ex = hold.x[:2]
    acc = lambda m: round(report.accuracy(m, hold, 10)[0], 4)  # noqa: E731
    for arch in archs.split(","):
        model = train.pretrained(arch, fm)
        layers = prunable_layers(model, ex)
        print(arch, "dense", acc(model), layers, flush=True)
        for r in map(float, ratios.split(",")):
            for c in configs.split(","):
                m = prune_with(copy.deepcopy(model), *parse(c), r, stats, ex, layers, N_STATS)
                row = [arch, r, c, round(1 - params(m) / params(model), 3), "noFT", acc(m)]
                if mode == "bnrecal":
                    recalibrate_bn(m, stats, max_samples=N_STATS, batch_size=250)
                    row += ["BN-recal", acc(m)]
                print(*row, flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("mode", choices=["variants", "bnrecal"])
    ap.add_argument("archs", help="comma-separated, e.g. vgg,resnet")
    ap.add_argument("ratios", help="comma-separated channel ratios, e.g. 0.1,0.2")
    ap.add_argument(
        "configs",
        nargs="?",
        default="l1,random,sp:,sp:features=linear",
        help="comma-separated scorer configs (default: %(default)s)",
    )
    a = ap.parse_args()
    main(a.mode, a.archs, a.ratios, a.configs)
