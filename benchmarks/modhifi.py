"""ModHiFi evidence, one command:  python benchmarks/modhifi.py  [--only fmnist|minilm] [--quick]

Fashion-MNIST (fully trained VGG and ResNet from ``train.pretrained``; statistics from 2048
training images, accuracy on the 10k test split, no fine-tuning anywhere):
  * accuracy vs parameters removed: modhifi-p (fidelity + delta* + BN recalibration) against
    l1 / taylor / witness scores pruned with torch-pruning (plain, and + BN recalibration);
  * the ablation {neither, compensation only, BN recalibration only, both} at 50% of channels;
  * ModHiFi-U forgetting of every class (forget / retained accuracy, seconds).
MiniLM (all-MiniLM-L6-v2): mean cosine similarity of sentence embeddings to the dense model on
held-out docstring sentences at 10/20/30% FFN neurons removed, with and without delta*, and at
1/2/3 of 12 attention heads removed per layer (torch-pruning; head-output score vs magnitude/random).
Writes modhifi_{fmnist,minilm}.{json,md} (with --arch: modhifi_fmnist_<arch>) to --out (default: a
scratch folder, see benchmarks/_results.py; --out benchmarks/results updates the committed results).
Both archs in parallel:  python benchmarks/modhifi.py --only fmnist --arch vgg &
                         python benchmarks/modhifi.py --only fmnist --arch resnet"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
import warnings
from pathlib import Path

import _results  # the helper beside this script
import torch

from pluginedit import api
from pluginedit.contrib import data, train
from pluginedit.core import registry
from pluginedit.editors.common.bnrecal import recalibrate_bn

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def accuracy(model, split, classes=None):
    with torch.no_grad():
        pred = torch.cat([model.eval()(x).argmax(1) for x in split.x.split(1000)])
    sel = (
        torch.ones_like(split.y, dtype=torch.bool)
        if classes is None
        else torch.isin(split.y, classes)
    )
    return float((pred[sel] == split.y[sel]).float().mean())


def baseline(model, scorer, ratio, calib, recal):
    m = copy.deepcopy(model)
    scores = api.score(m, scorer, data=calib, num_classes=10, max_samples=2048)
    rec = api.edit(m, "prune", scores, ratio=ratio, example_inputs=calib.x[:1])
    if recal:
        recalibrate_bn(m, calib)
    return m, rec


# the default (refit='auto': on these small CNNs the error-corrected sequential refit, one
# extra calibration pass per refit layer), and delta* from the dense model's inputs only
MODHIFI_ROWS = [
    ("modhifi-p (default)", {}),
    ("fidelity + delta* + BN recal (modhifi-p, refit='dense')", {"refit": "dense"}),
]


def modhifi(model, ratio, calib, **kw):
    m = copy.deepcopy(model)
    rec = api.edit(m, "modhifi-p", None, data=calib, ratio=ratio, steps=1, calib_samples=2048, **kw)
    return m, rec


def params(model):
    return sum(p.numel() for p in model.parameters())


def fmnist(quick: bool, archs=("vgg", "resnet")) -> dict:
    bundle = data.load_dataset("fashion-mnist", DATA)
    calib = bundle.train.subset(2048, seed=0)
    test = bundle.test.subset(2000, seed=0) if quick else bundle.test
    scorers = ["l1", "taylor"] + (["witness"] if "witness" in registry.plugins("scorer") else [])
    ratios = [0.5] if quick else [0.3, 0.5]
    out = {"scorers": scorers, "ratios": ratios, "models": {}}
    for arch in archs:
        model = train.pretrained(arch, bundle)
        p0, dense = params(model), accuracy(model, test)
        res = {"dense_accuracy": dense, "params": p0, "curve": [], "ablation": {}, "forget": []}
        print(f"{arch}: dense {dense:.4f}", flush=True)
        for ratio in ratios:
            for name in scorers:
                for recal in (False, True):
                    t = time.time()
                    try:
                        m, _ = baseline(model, name, ratio, calib, recal)
                        row = {
                            "method": name + (" + BN recal" if recal else ""),
                            "ratio": ratio,
                            "accuracy": accuracy(m, test),
                            "params_removed": 1 - params(m) / p0,
                        }
                    except Exception as e:  # record, do not hide, a failing scorer
                        row = {"method": name, "ratio": ratio, "error": f"{type(e).__name__}: {e}"}
                    row["seconds"] = time.time() - t
                    res["curve"].append(row)
                    print(arch, row, flush=True)
            for method, kw in MODHIFI_ROWS:
                t = time.time()
                m, rec = modhifi(model, ratio, calib, **kw)
                row = {
                    "method": method,
                    "ratio": ratio,
                    "accuracy": accuracy(m, test),
                    "params_removed": 1 - params(m) / p0,
                    "seconds": time.time() - t,
                }
                res["curve"].append(row)
                print(arch, row, flush=True)
        for comp, recal in [(False, False), (True, False), (False, True), (True, True)]:
            for conv in ("full", "slice") if comp else ("full",):
                m, rec = modhifi(
                    model,
                    0.5,
                    calib,
                    compensate=comp,
                    recalibrate=recal,
                    conv_refit=conv,
                    refit="dense",  # the paper's parts, without the sequential refit
                )
                key = f"compensation={'yes (' + conv + ')' if comp else 'no'}, BN recal={'yes' if recal else 'no'}"
                res["ablation"][key] = accuracy(m, test)
                print(arch, key, res["ablation"][key], flush=True)
        for k in range(10):
            m = copy.deepcopy(model)
            t = time.time()
            api.forget(
                m,
                k,
                calib if quick else bundle.train.subset(6000, seed=1),
                editor="modhifi-u",
                num_classes=10,
            )
            sec = time.time() - t
            rest = torch.tensor([j for j in range(10) if j != k])
            res["forget"].append(
                {
                    "class": k,
                    "forget_accuracy": accuracy(m, test, torch.tensor([k])),
                    "retained_accuracy": accuracy(m, test, rest),
                    "dense_retained_accuracy": accuracy(model, test, rest),
                    "seconds": sec,
                }
            )
            print(arch, res["forget"][-1], flush=True)
        out["models"][arch] = res
    return out


def fmnist_md(r: dict) -> str:
    lines = [
        "# ModHiFi on Fashion-MNIST (no fine-tuning)",
        "",
        "Statistics from 2048 training images; accuracy on the test split. "
        "`ratio` = fraction of channels removed per layer (torch-pruning, head kept).",
        "",
    ]
    for arch, res in r["models"].items():
        lines += [
            f"## {arch} (dense accuracy {res['dense_accuracy']:.4f}, {res['params']} parameters)",
            "",
            "| method | channels removed | params removed | accuracy | seconds |",
            "|---|---|---|---|---|",
        ]
        for row in res["curve"]:
            if "error" in row:
                lines.append(
                    f"| {row['method']} | {row['ratio']} | - | error: {row['error'][:80]} | - |"
                )
            else:
                lines.append(
                    f"| {row['method']} | {row['ratio']} | {row['params_removed']:.3f} | "
                    f"{row['accuracy']:.4f} | {row['seconds']:.1f} |"
                )
        lines += [
            "",
            "Ablation at 50% of channels (fidelity scores; refit='dense', the paper's parts):",
            "",
            "| cell | accuracy |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.4f} |" for k, v in res["ablation"].items()]
        f = res["forget"]
        mean = lambda key: sum(x[key] for x in f) / len(f)  # noqa: E731
        lines += [
            "",
            "ModHiFi-U (forget-class samples only):",
            "",
            "| class | forget acc | retained acc | dense retained | seconds |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['class']} | {x['forget_accuracy']:.4f} | {x['retained_accuracy']:.4f} | "
            f"{x['dense_retained_accuracy']:.4f} | {x['seconds']:.2f} |"
            for x in f
        ]
        lines += [
            f"| mean | {mean('forget_accuracy'):.4f} | {mean('retained_accuracy'):.4f} | "
            f"{mean('dense_retained_accuracy'):.4f} | {mean('seconds'):.2f} |",
            "",
        ]
    if "witness" not in r["scorers"]:
        lines.append("The `witness` scorer was not registered when this ran.")
    return "\n".join(lines) + "\n"


def minilm(quick: bool) -> dict:
    from pluginedit.contrib import hf

    calib, held = hf.split_corpus(
        hf.english_sentences(), 96 if quick else 256, 100 if quick else 300
    )
    model, tok = hf.load_minilm()
    dense = hf.embed(model, tok, held)
    grams = hf.ffn_grams(model, tok, calib)
    rows = []
    for frac in (0.1, 0.2, 0.3):
        for comp in (False, True):
            m, _ = hf.prune_ffn(model, grams, frac, comp)
            rows.append(
                {
                    "ffn_removed": frac,
                    "compensation": comp,
                    "mean_cosine": hf.cosine_to_dense(dense, m, tok, held),
                }
            )
            print(rows[-1], flush=True)
    example = dict(tok(held[:2], padding=True, return_tensors="pt"))
    hscores = hf.head_scores(model, hf.head_grams(model, tok, calib))
    gen = torch.Generator().manual_seed(0)
    rand = [torch.rand(12, generator=gen) for _ in hscores]
    head_rows = []
    for n in (1, 2, 3):
        row = {"heads_removed_per_layer": n}
        for name, sc in (("head_output", hscores), ("magnitude", None), ("random", rand)):
            m, _ = hf.prune_heads(model, example, n, sc)
            row[name] = hf.cosine_to_dense(dense, m, tok, held)
            row["params_removed"] = params(model) - params(m)
        head_rows.append(row)
        print(row, flush=True)
    return {
        "calibration_sentences": len(calib),
        "held_out_sentences": len(held),
        "score": "cholesky row norm of G*(W_D W_D^T)",
        "rows": rows,
        "params_dense": params(model),
        "head_scores": {
            "head_output": "E||W_O[:, h] z_h||^2 on calibration tokens",
            "magnitude": "torch-pruning GroupMagnitudeImportance(p=2)",
            "random": "torch.rand, seed 0",
        },
        "head_rows": head_rows,
    }


def minilm_md(r: dict) -> str:
    lines = [
        "# ModHiFi FFN pruning of all-MiniLM-L6-v2",
        "",
        f"{r['calibration_sentences']} calibration / {r['held_out_sentences']} held-out English "
        "sentences from installed packages' docstrings; every layer loses the same fraction of "
        f"its 1536 FFN neurons (score: {r['score']}); mean cosine similarity of the "
        "normalised mean-pooled sentence embeddings to the dense model.",
        "",
        "| FFN neurons removed | without delta* | with delta* |",
        "|---|---|---|",
    ]
    by = {(x["ffn_removed"], x["compensation"]): x["mean_cosine"] for x in r["rows"]}
    for f in sorted({x["ffn_removed"] for x in r["rows"]}):
        lines.append(f"| {f:.0%} | {by[f, False]:.4f} | {by[f, True]:.4f} |")
    if r.get("head_rows"):
        hs = r["head_scores"]
        lines += [
            "",
            "## Attention-head pruning (torch-pruning MetaPruner, whole heads)",
            "",
            "Every layer loses the same number of its 12 heads (head size 32, hidden 384; no "
            "compensation, FFN untouched); same held-out sentences and metric. Scores: "
            f"head-output = {hs['head_output']}; magnitude = {hs['magnitude']}; "
            f"random = {hs['random']}. Dense model: {r['params_dense']:,} parameters.",
            "",
            "| heads removed / layer | parameters removed | head-output score | magnitude "
            "| random |",
            "|---|---|---|---|---|",
        ]
        for x in r["head_rows"]:
            lines.append(
                f"| {x['heads_removed_per_layer']} of 12 | {x['params_removed']:,} | "
                f"{x['head_output']:.4f} | {x['magnitude']:.4f} | {x['random']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["fmnist", "minilm"])
    ap.add_argument("--quick", action="store_true", help="smaller test split, one ratio")
    ap.add_argument(
        "--arch",
        choices=["vgg", "resnet"],
        help="one Fashion-MNIST model only "
        "(writes modhifi_fmnist_<arch>.*; run both in parallel on two cores)",
    )
    ap.add_argument("--out", default=None, help=_results.out_help("modhifi"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out = _results.out_dir(args.out, "modhifi")
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": 1,
        "command": "python benchmarks/modhifi.py " + " ".join(argv or sys.argv[1:]),
    }
    for name, run, md in (("fmnist", fmnist, fmnist_md), ("minilm", minilm, minilm_md)):
        if args.only and args.only != name:
            continue
        t = time.time()
        res = run(args.quick, (args.arch,)) if name == "fmnist" and args.arch else run(args.quick)
        res["env"], res["seconds"] = env, time.time() - t
        stem = f"modhifi_{name}" + (f"_{args.arch}" if name == "fmnist" and args.arch else "")
        _results.write(out / stem, res, md(res), indent=2)
        print(f"wrote {out}/{stem}.json/.md ({res['seconds']:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
