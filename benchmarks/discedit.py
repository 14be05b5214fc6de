"""DisCEdit / TVSPrune evidence: pruning without fine-tuning, class forgetting, scoring time.

    python benchmarks/discedit.py [--datasets fashion-mnist mnist] [--archs vgg resnet] [--quick]

Statistics come from the train split, accuracy from the test split. Writes
benchmarks/results/discedit_{prune,forget,timing}.json, discedit.md and discedit_prune.png.
Pruning: every scorer prunes the same layers (those torch-pruning can remove alone) by the same
per-layer fraction; `witness` runs through discedit-sp (statistics recomputed layer by layer).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from pluginedit import api, data, report, train
from pluginedit.editors.discedit import remove_zeroed, uncoupled_layers
from pluginedit.editors.mask import select_lowest, zero_components
from pluginedit.record import EditRecord

OUT = Path(__file__).parent / "results"
SCORERS = {"witness-fisher": ("discedit-sp", {"features": "linear"}),
           "witness-poly": ("discedit-sp", {"features": "poly"}),
           "tvs": ("tvs", {}), "l1": ("l1", {}), "taylor": ("taylor", {}), "random": ("random", {})}


def params(m):
    return sum(p.numel() for p in m.parameters())


def prune_one(model, name, ratio, stats, example, layers, n_stats):
    m = copy.deepcopy(model)
    kind, opts = SCORERS[name]
    if kind == "discedit-sp":
        api.edit(m, "discedit-sp", data=stats, num_classes=10, ratio=ratio, example_inputs=example,
                 layers=layers, max_samples=n_stats, **opts)
        return m
    s = api.score(m, kind, data=stats, targets=layers, num_classes=10, max_samples=n_stats, **opts) \
        if kind != "taylor" else api.score(m, kind, data=stats, targets=layers, num_classes=10, max_samples=n_stats)
    idx = select_lowest(s, ratio, layers)
    zero_components(m, idx, True, EditRecord("bench"))
    remove_zeroed(m, example, idx)
    return m


def bench_prune(bundle, arch, model, ratios, n_stats):
    stats, test = bundle.train.subset(n_stats, seed=1), bundle.test
    example = test.x[:2]
    layers = uncoupled_layers(model, example)
    rows, before = [], params(model)
    dense = report.accuracy(model, test, 10)[0]
    for name in SCORERS:
        for r in ratios:
            m = prune_one(model, name, r, stats, example, layers, n_stats)
            rows.append({"dataset": bundle.name, "arch": arch, "scorer": name, "channel_ratio": r,
                         "params_removed": 1 - params(m) / before, "accuracy": report.accuracy(m, test, 10)[0],
                         "dense_accuracy": dense})
            print(rows[-1], flush=True)
    return rows


def bench_forget(bundle, arch, model, n_stats, ft_samples, classes):
    stats, test = bundle.train.subset(n_stats, seed=1), bundle.test
    _, dense = report.accuracy(model, test, 10)
    rows = []
    for k in classes:
        for ft in (0, 1):
            m = copy.deepcopy(model)
            t = time.perf_counter()
            rec = api.forget(m, k, stats, num_classes=10, max_samples=n_stats, finetune_epochs=ft,
                             finetune_data=bundle.train.subset(ft_samples, seed=2) if ft else None)
            secs = time.perf_counter() - t
            _, pc = report.accuracy(m, test, 10)
            f = report.forgetting(pc, k)
            rows.append({"dataset": bundle.name, "arch": arch, "class": k, "finetune_epochs": ft,
                         "forgotten_accuracy": f["forgotten_accuracy"], "retained_accuracy": f["retained_accuracy"],
                         "dense_forgotten": dense[k], "dense_retained": (sum(dense) - dense[k]) / 9,
                         "channels_zeroed": rec.num_changed(), "seconds": secs})
            print(rows[-1], flush=True)
    return rows


def bench_timing(bundle, arch, model, n_stats):
    stats = bundle.train.subset(n_stats, seed=1)
    rows = []
    for name, kind, opts in [("witness-poly", "witness", {}), ("witness-mpm", "witness", {"method": "mpm"}),
                             ("witness-robust", "witness", {"method": "robust"}), ("tvs-iso", "tvs", {}),
                             ("tvs-diag", "tvs", {"form": "diag"}), ("l1", "l1", {}), ("taylor", "taylor", {})]:
        t = time.perf_counter()
        api.score(model, kind, data=stats, num_classes=10, max_samples=n_stats, **opts)
        rows.append({"dataset": bundle.name, "arch": arch, "scorer": name, "samples": n_stats,
                     "seconds": time.perf_counter() - t})
        print(rows[-1], flush=True)
    return rows


def summarise(prune, forget, timing) -> str:
    lines = ["# DisCEdit / TVSPrune benchmarks", "",
             "Reproduce: `python benchmarks/discedit.py` (CPU; statistics from train, accuracy on test).", "",
             "## Accuracy without fine-tuning vs parameters removed", "",
             "| data | arch | scorer | channels/layer | params removed | accuracy (dense) |", "|---|---|---|---|---|---|"]
    for r in prune:
        lines.append(f"| {r['dataset']} | {r['arch']} | {r['scorer']} | {r['channel_ratio']:.1f} | "
                     f"{r['params_removed']:.1%} | {r['accuracy']:.4f} ({r['dense_accuracy']:.4f}) |")
    lines += ["", "## Class forgetting (mean ± std over classes)", "",
              "| data | arch | FT epochs | classes | forgotten acc | retained acc | dense retained |", "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["arch"], r["finetune_epochs"]) for r in forget})
    for d, a, ft in keys:
        rs = [r for r in forget if (r["dataset"], r["arch"], r["finetune_epochs"]) == (d, a, ft)]
        fa, ra = [r["forgotten_accuracy"] for r in rs], [r["retained_accuracy"] for r in rs]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        lines.append(f"| {d} | {a} | {ft} | {len(rs)} | {statistics.mean(fa):.4f} ± {sd(fa):.4f} | "
                     f"{statistics.mean(ra):.4f} ± {sd(ra):.4f} | {statistics.mean(r['dense_retained'] for r in rs):.4f} |")
    lines += ["", "## Time to score all layers", "", "| data | arch | scorer | samples | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['arch']} | {r['scorer']} | {r['samples']} | {r['seconds']:.2f} |" for r in timing]
    return "\n".join(lines) + "\n"


def plot(prune, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    combos = sorted({(r["dataset"], r["arch"]) for r in prune})
    fig, axes = plt.subplots(1, len(combos), figsize=(5 * len(combos), 4), squeeze=False)
    for ax, (d, a) in zip(axes[0], combos):
        for name in SCORERS:
            rs = [r for r in prune if (r["dataset"], r["arch"], r["scorer"]) == (d, a, name)]
            ax.plot([r["params_removed"] for r in rs], [r["accuracy"] for r in rs], marker="o", label=name)
        ax.set(title=f"{d} {a}", xlabel="fraction of parameters removed", ylabel="test accuracy (no FT)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["fashion-mnist", "mnist"])
    ap.add_argument("--archs", nargs="+", default=["vgg", "resnet"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--stats", type=int, default=2000)
    ap.add_argument("--ft-samples", type=int, default=12000)
    ap.add_argument("--classes", nargs="+", type=int, default=list(range(10)))
    ap.add_argument("--skip", nargs="*", default=[], choices=["prune", "forget", "timing"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    prune, forget, timing = [], [], []
    for ds in args.datasets:
        bundle = data.load_dataset(ds, "/work/shared/data")
        for arch in args.archs:
            model = train.pretrained(arch, bundle)
            if "timing" not in args.skip:
                timing += bench_timing(bundle, arch, model, args.stats)
            if "forget" not in args.skip:
                forget += bench_forget(bundle, arch, model, args.stats, args.ft_samples, args.classes)
            if "prune" not in args.skip:
                prune += bench_prune(bundle, arch, model, args.ratios, args.stats)
            for name, rows in (("prune", prune), ("forget", forget), ("timing", timing)):
                (OUT / f"discedit_{name}.json").write_text(json.dumps(rows, indent=1))
            (OUT / "discedit.md").write_text(summarise(prune, forget, timing))
            if prune:
                plot(prune, OUT / "discedit_prune.png")


if __name__ == "__main__":
    main()
