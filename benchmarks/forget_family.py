"""Forgetting across a family of models, one command:  python benchmarks/forget_family.py

Eight CNNs on Fashion-MNIST and MNIST, generated and trained deterministically here (cached by
``contrib.train.pretrained``): VGG-style and ResNet-style, widths x0.5 .. x2, 2 or 3 stages /
1 or 2 blocks per stage, with or without a hidden Linear, 2-4 epochs, seeds 0 and 1, BN
everywhere; each on a seeded 20,000-image subset of the training split (so the family trains in
minutes on 2 CPU cores). Half of them ("tune") is what the editors' defaults were chosen on; the other half
("held-out") is only reported. Per model and forgotten class: forgotten-class and retained test
accuracy (10k test split) against the dense model, seconds per edit, for each editor variant;
calibration = 2,048 images of the model's training subset, no fine-tuning. Editors: discedit-u,
modhifi-u and coar-forget, each in the variants of VARIANTS. Mean, worst case and the distribution per
half, and a plot. Writes <name>.{json,md,png} (default forget_family) to --out (default: a scratch
folder, see benchmarks/_results.py; --out benchmarks/results updates the committed results).

  --half tune|held-out|all|zoo   which models (default all = tune + held-out; zoo: the two zoo
                                 Fashion-MNIST models, calibration 6,000 images as in modhifi.py)
  --editors a,b              editor variants (names in VARIANTS)
  --classes 0,1,...          forgotten classes (default all ten)
  --models a,b               only these models
  --train-only               train (or load) the family and print dense accuracies
  --out DIR                  results folder; --merge reads its stems from it too
  --name STEM                results file name (default forget_family)
  --merge a,b                combine the results DIR/a.json, DIR/b.json into --name"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import time
from pathlib import Path

import _results  # the helper beside this script
import torch

import pluginedit as pe
from pluginedit.contrib import data, train
from pluginedit.core.errors import InputError
from pluginedit.evaluate import predictions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# name: (data set, arch, config, epochs, seed, half)
FAMILY = {
    "F-vgg-x1": ("fashion-mnist", "vgg", {"widths": (16, 32, 64), "hidden": 64}, 3, 0, "tune"),
    "F-res-x1": ("fashion-mnist", "resnet", {"widths": (16, 32, 64), "blocks": 1}, 3, 0, "tune"),
    "M-vgg-x0.5-nohidden": ("mnist", "vgg", {"widths": (8, 16, 32), "hidden": 0}, 2, 0, "tune"),
    "M-res-x1-deep": ("mnist", "resnet", {"widths": (16, 32, 64), "blocks": 2}, 2, 1, "tune"),
    "F-vgg-x2-2stage": (
        "fashion-mnist",
        "vgg",
        {"widths": (32, 64), "hidden": 128},
        2,
        1,
        "held-out",
    ),
    "F-res-x0.5-deep": (
        "fashion-mnist",
        "resnet",
        {"widths": (8, 16, 32), "blocks": 2},
        4,
        1,
        "held-out",
    ),
    "M-vgg-x1": ("mnist", "vgg", {"widths": (16, 32, 64), "hidden": 64}, 2, 1, "held-out"),
    "M-res-x1": ("mnist", "resnet", {"widths": (16, 32, 64), "blocks": 1}, 2, 0, "held-out"),
    # the zoo models the editors were first developed on (--half zoo): full training split, default
    # recipe, calibration as in benchmarks/modhifi.py, so the rows compare with modhifi_fmnist_*.md
    "zoo-vgg": ("fashion-mnist", "vgg", None, None, 0, "zoo"),
    "zoo-resnet": ("fashion-mnist", "resnet", None, None, 0, "zoo"),
}

# variant name: (editor, options); every option that differs between variants is spelled out, so
# a row keeps its meaning when an editor's defaults change
VARIANTS = {
    "discedit-u": ("discedit-u", {"num_layers": 2, "coupled": False}),
    "discedit-u/held-out": ("discedit-u", {"num_layers": 2, "check": "held-out", "coupled": False}),
    "discedit-u/held-out/0.5%": (
        "discedit-u",
        {"num_layers": 2, "check": "held-out", "forget_target": 0.005, "coupled": False},
    ),
    "discedit-u/4-layers": ("discedit-u", {"num_layers": 4, "coupled": False}),
    # issue 24: each candidate conv's coupled channel group (a residual stream edited whole)
    "discedit-u/4-layers/groups": ("discedit-u", {"num_layers": 4, "coupled": True}),
    "modhifi-u": ("modhifi-u", {"hidden": True, "rows": "all", "max_fraction": 0.08}),
    "modhifi-u/held-out": (
        "modhifi-u",
        {"hidden": True, "rows": "all", "max_fraction": 0.08, "check": "held-out"},
    ),
    "modhifi-u/head": ("modhifi-u", {"hidden": False, "rows": "all", "max_fraction": 0.08}),
    "modhifi-u/head/25%": ("modhifi-u", {"hidden": False, "rows": "all", "max_fraction": 0.25}),
    "modhifi-u/head/row": (
        "modhifi-u",
        {"hidden": False, "rows": "forget", "max_fraction": 1.0, "mode": "zero"},
    ),
    "modhifi-u/head/row/held-out": (
        "modhifi-u",
        {
            "hidden": False,
            "rows": "forget",
            "max_fraction": 1.0,
            "mode": "zero",
            "check": "held-out",
        },
    ),
    "modhifi-u/head/row/negate": (
        "modhifi-u",
        {"hidden": False, "rows": "forget", "max_fraction": 1.0, "mode": "negate"},
    ),
    "coar-forget": ("coar-forget", {}),
}


# the plot: the defaults before and after issue 12, and COAR (every variant is in the tables)
PLOTTED = (
    "discedit-u",
    "discedit-u/4-layers",
    "modhifi-u",
    "modhifi-u/head/row/negate",
    "coar-forget",
)

TRAIN_IMAGES = 20_000


def in_half(h: str, half: str) -> bool:
    """Whether a model of half ``h`` belongs to ``half`` ("all" is the family: tune + held-out)."""
    return h == half or (half == "all" and h != "zoo")


def family(half: str, only=None):
    bundles = {}
    for name, (ds, arch, config, epochs, seed, h) in FAMILY.items():
        if not in_half(h, half) or (only and name not in only):
            continue
        key = ds + (" full" if h == "zoo" else "")
        if key not in bundles:
            full = data.load_dataset(ds, DATA)
            bundles[key] = (
                full
                if h == "zoo"
                else dataclasses.replace(full, train=full.train.subset(TRAIN_IMAGES, seed=0))
            )
        t = time.time()
        model = train.pretrained(arch, bundles[key], epochs=epochs, seed=seed, config=config).eval()
        yield name, h, model, bundles[key], time.time() - t


def accuracies(model, test, k: int) -> tuple[float, float]:
    """(accuracy on class k, accuracy on the other classes) of the test split."""
    pred = predictions(model, test.x)
    hit, on_k = pred == test.y, test.y == k
    return float(hit[on_k].float().mean()), float(hit[~on_k].float().mean())


def run_edit(model, bundle, calib, k: int, variant: str) -> dict:
    editor, opts = VARIANTS[variant]
    m = copy.deepcopy(model)
    t = time.time()
    try:
        rec = pe.edit(m, editor, data=calib, forget_class=k, num_classes=bundle.num_classes, **opts)
    except InputError as e:
        return {"error": str(e), "seconds": time.time() - t}
    seconds = time.time() - t
    forgot, kept = accuracies(m, bundle.test, k)
    return {"forgotten": forgot, "retained": kept, "seconds": seconds, "changed": rec.num_changed()}


def summarise(rows, variant, half) -> dict:
    ours = [r for r in rows if r["variant"] == variant and in_half(r["half"], half)]
    sel = [r for r in ours if "error" not in r]
    failed = len(ours) - len(sel)
    if not sel:
        return {"edits": 0, "failed": failed}
    f = torch.tensor([r["forgotten"] for r in sel])
    drop = torch.tensor([r["dense_retained"] - r["retained"] for r in sel])
    return {
        "edits": len(sel),
        "failed": failed,
        "mean_forgotten": float(f.mean()),
        "worst_forgotten": float(f.max()),
        "p90_forgotten": float(f.quantile(0.9)),
        "mean_retained_drop": float(drop.mean()),
        "worst_retained_drop": float(drop.max()),
        "p90_retained_drop": float(drop.quantile(0.9)),
        "median_seconds": float(torch.tensor([r["seconds"] for r in sel]).median()),
    }


def markdown(res) -> str:
    lines = [
        "# Forgetting across a model family (no fine-tuning)",
        "",
        f"Machine: {res['machine']}. Command: `{res['command']}`. Calibration {res['calib']} training images; "
        "accuracies on the 10k test split; drop = dense retained accuracy - edited retained accuracy (points x 0.01).",
        "",
        "The editors' defaults since issue 12 are the rows `modhifi-u/head/row/negate` (modhifi-u) and "
        "`discedit-u/4-layers` (discedit-u); the rows `modhifi-u` and `discedit-u` are the defaults before it.",
        "",
        "## Models",
        "",
        "| model | half | data | arch | config | epochs | seed | dense test acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in res["models"].items():
        lines.append(
            f"| {name} | {m['half']} | {m['data']} | {m['arch']} | {m['config']} | {m['epochs']} | {m['seed']} | {m['dense']:.4f} |"
        )
    lines += [
        "",
        "## Summary",
        "",
        "| editor | half | edits | failed | mean forgotten | p90 forgotten | worst forgotten | "
        "mean retained drop | p90 drop | worst retained drop | median s/edit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in res["summary"].items():
        variant, half = key.split("|")
        if not s["edits"]:
            if s["failed"]:
                lines.append(f"| {variant} | {half} | 0 | {s['failed']} | | | | | | | |")
            continue
        lines.append(
            f"| {variant} | {half} | {s['edits']} | {s['failed']} | {s['mean_forgotten']:.4f} | {s['p90_forgotten']:.4f} | "
            f"{s['worst_forgotten']:.4f} | {s['mean_retained_drop']:.4f} | {s['p90_retained_drop']:.4f} | "
            f"{s['worst_retained_drop']:.4f} | {s['median_seconds']:.1f} |"
        )
    lines += [
        "",
        "## Every edit",
        "",
        "| model | half | editor | class | forgotten | retained | dense retained | s | changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['half']} | {r['variant']} | {r['class']} | failed: {r['error'][:80]} | | | | |"
            )
        else:
            lines.append(
                f"| {r['model']} | {r['half']} | {r['variant']} | {r['class']} | {r['forgotten']:.4f} | {r['retained']:.4f} | "
                f"{r['dense_retained']:.4f} | {r['seconds']:.1f} | {r['changed']} |"
            )
    return "\n".join(lines) + "\n"


def plot(res, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    marks = {"tune": "o", "held-out": "x"}
    for i, variant in enumerate(v for v in PLOTTED if any(r["variant"] == v for r in res["rows"])):
        for half, mk in marks.items():
            sel = [
                r
                for r in res["rows"]
                if r["variant"] == variant and r["half"] == half and "error" not in r
            ]
            ax.scatter(
                [100 * r["forgotten"] for r in sel],
                [100 * (r["dense_retained"] - r["retained"]) for r in sel],
                marker=mk,
                color=f"C{i}",
                label=f"{variant} ({half})",
                alpha=0.7,
            )
    ax.axvline(5, ls=":", color="grey")
    ax.axhline(3, ls=":", color="grey")
    ax.set_xlabel("forgotten-class test accuracy (%)")
    ax.set_ylabel("retained accuracy drop (points)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _results.save_figure(fig, path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--half", default="all", choices=["all", "tune", "held-out", "zoo"])
    ap.add_argument("--editors", default=",".join(VARIANTS))
    ap.add_argument("--classes", default=",".join(map(str, range(10))))
    ap.add_argument("--calib", type=int, default=2048)
    ap.add_argument(
        "--models", default=None, help="comma-separated model names (default: the half's)"
    )
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--out", default=None, help=_results.out_help("forget_family"))
    ap.add_argument(
        "--name", default="forget_family", help="results file name: NAME.json, NAME.md, NAME.png"
    )
    ap.add_argument(
        "--merge",
        default=None,
        help="comma-separated result stems (in --out) to combine into --name",
    )
    args = ap.parse_args()
    folder = _results.out_dir(args.out, "forget_family")
    if args.merge:
        return merge(args.merge.split(","), folder, args.name)
    variants = args.editors.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    classes = [int(c) for c in args.classes.split(",")]
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "command": "python benchmarks/forget_family.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v not in (None, False, True)
        ),
        "calib": args.calib,
        "models": {},
        "rows": [],
    }
    for name, half, model, bundle, secs in family(
        args.half, args.models and args.models.split(",")
    ):
        ds, arch, config, epochs, seed, _ = FAMILY[name]
        dense = float((predictions(model, bundle.test.x) == bundle.test.y).float().mean())
        res["models"][name] = {
            "half": half,
            "data": ds,
            "arch": arch,
            "config": str(config),
            "epochs": epochs,
            "seed": seed,
            "dense": dense,
            "train_or_load_s": secs,
        }
        print(f"{name} ({half}): dense {dense:.4f} ({secs:.0f} s)", flush=True)
        if args.train_only:
            continue
        calib = (
            bundle.train.subset(6000, seed=1)
            if half == "zoo"
            else bundle.train.subset(args.calib, seed=0)
        )
        for k in classes:
            dense_k = accuracies(model, bundle.test, k)
            for v in variants:
                row = {
                    "model": name,
                    "half": half,
                    "variant": v,
                    "class": k,
                    "dense_forgotten": dense_k[0],
                    "dense_retained": dense_k[1],
                } | run_edit(model, bundle, calib, k, v)
                res["rows"].append(row)
                print(
                    f"  {v} class {k}: {row.get('forgotten', 'failed')} / {row.get('retained', '')} "
                    f"(dense {dense_k[1]:.4f})",
                    flush=True,
                )
        if not args.train_only:
            write(res, folder, args.name)  # after every model: a stopped run keeps what it measured


def write(res: dict, folder: Path, out: str) -> None:
    variants = sorted({r["variant"] for r in res["rows"]})
    res["summary"] = {
        f"{v}|{h}": summarise(res["rows"], v, h)
        for v in variants
        for h in ("tune", "held-out", "all", "zoo")
    }
    stem = folder / out
    _results.write(stem, res, markdown(res))
    plot(res, Path(f"{stem}.png"))
    print(markdown(res).split("## Every edit")[0], flush=True)


def merge(stems: list[str], folder: Path, out: str) -> None:
    """One results file from the runs ``stems`` (each a <folder>/<stem>.json)."""
    parts = [_results.read(folder / f"{s}.json") for s in stems]
    res = {
        "machine": parts[0]["machine"],
        "command": "; ".join(p["command"] for p in parts)
        + f"; python benchmarks/forget_family.py --merge {','.join(stems)} --name {out}",
        "calib": parts[0]["calib"],
        "models": {},
        "rows": [],
    }
    for p in parts:
        res["models"] |= p["models"]
        res["rows"] += p["rows"]
    write(res, folder, out)


if __name__ == "__main__":
    main()
