"""COAR evidence, one command:  python benchmarks/coar.py [--arch resnet|vgg] [--quick]

On a fully trained Fashion-MNIST CNN (``train.pretrained``), components = every conv filter and
linear row except the classifier head, alpha = 5 %:
  * cost per mask: a batched masked forward (16 masks per pass) against a plain forward over the
    same replicated images, same run;
  * LDS (per-example Pearson correlation between predicted and actual margins on 300 fresh masks)
    of N test examples against the number of masks, for least squares, cross-validated ridge,
    difference of means, and the last two with the gradient prior (the fewer-masks estimator);
    baselines leave-one-out and gradient x parameter; masks each needs to reach a level;
  * COAR-Edit: fix misclassified test examples (each alone), forget each of some classes;
    test accuracy before / after.
Margins under all masks are computed once and every estimator reads the same ones.
Writes coar_<arch>.{json,md} to --out (default: a scratch folder, see benchmarks/_results.py;
--out benchmarks/results updates the committed results)."""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import _results  # the helper beside this script
import torch

from pluginedit import api
from pluginedit.capture import default_targets
from pluginedit.contrib import data, train
from pluginedit.core.errors import InputError
from pluginedit.evaluate import accuracy, predictions
from pluginedit.scorers.coar import (
    chord_prior,
    gradient_prior,
    gradient_times_parameter,
    leave_one_out,
    masked_margins,
    pearson,
    solve,
)
from pluginedit.scorers.masks import component_slices, keep_masks, margins
from pluginedit.stats import AblationSums

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALPHA, CHUNK, LDS_MASKS, LDS_SEED = 0.05, 16, 300, 10_000


def cost_per_mask(model, x, y, slices, c, reps=3) -> dict:
    """Seconds per mask of the batched masked forward vs a plain forward on the same images."""
    masks = keep_masks(1, 0, 64, c, ALPHA)
    plain, masked = [], []
    with torch.no_grad():
        for _ in range(reps):
            t = time.perf_counter()
            for _start in range(0, 64, CHUNK):
                margins(model(x.repeat(CHUNK, 1, 1, 1)), y.repeat(CHUNK))
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            masked_margins(model, x, y, slices, masks, CHUNK)
            masked.append(time.perf_counter() - t)
    return {
        "plain_s_per_mask": min(plain) / 64,
        "masked_s_per_mask": min(masked) / 64,
        "ratio": min(masked) / min(plain),
        "images_per_forward": CHUNK * len(y),
    }


def summary(corr: torch.Tensor) -> dict:
    return {
        "mean": float(corr.mean()),
        "p10": float(corr.quantile(0.1)),
        "min": float(corr.min()),
        "median": float(corr.median()),
    }


def fit(x_masks, y_masks, prior, estimator, n) -> tuple[torch.Tensor, torch.Tensor]:
    """Attributions from the first n masks: sums of the residual from ``prior`` (or of y)."""
    c, gram = x_masks.shape[1], estimator != "diffmeans"
    sums = AblationSums(c, y_masks.shape[1], gram=gram, folds=5 if gram else 1)
    p = torch.zeros(c, y_masks.shape[1], dtype=torch.float64) if prior is None else prior
    for s in range(0, n, 2048):
        xm = x_masks[s : min(n, s + 2048)]
        sums.update(xm, y_masks[s : min(n, s + 2048)] - xm.double() @ p, first=s)
    w, b, _ = solve(sums, estimator, None if estimator == "ridge" else 0.0)
    return (w + p).float(), b.float()


def run_lds(model, x, y, paths, counts, quick) -> dict:
    slices = component_slices(model, paths)
    c = sum(w for _, _, w in slices)
    lds_masks = keep_masks(LDS_SEED, 0, LDS_MASKS, c, ALPHA)
    actual = masked_margins(model, x, y, slices, lds_masks, CHUNK)

    def lds(w, b):
        return pearson(actual, lds_masks.float() @ w + b)

    out = {"components": c, "examples": len(y), "cost": cost_per_mask(model, x, y, slices, c)}
    print(
        f"  {c} components; cost per mask {out['cost']['ratio']:.2f}x a plain forward", flush=True
    )
    m = max(counts)
    t = time.time()
    x_masks = keep_masks(0, 0, m, c, ALPHA)
    y_masks = masked_margins(model, x, y, slices, x_masks, CHUNK).double()
    out["masked_forward_seconds"] = {"masks": m, "seconds": time.time() - t}
    print(f"  {m} masks in {time.time() - t:.0f}s", flush=True)

    base = {}
    t = time.time()
    loo = leave_one_out(model, x, y, paths, CHUNK)
    base["leave_one_out"] = summary(lds(loo.w, loo.b)) | {
        "forward_equivalents": c + 1,
        "seconds": time.time() - t,
    }
    t = time.time()
    gxp = gradient_times_parameter(model, x, y, paths)
    base["grad_x_param"] = summary(lds(gxp.w, gxp.b)) | {
        "forward_equivalents": 3,
        "seconds": time.time() - t,
    }
    t = time.time()
    grad16 = gradient_prior(model, x, y, slices, 16, ALPHA, 0)
    base["mask_gradients_16"] = summary(lds(grad16.float(), torch.zeros(len(y)))) | {
        "forward_equivalents": 48,
        "seconds": time.time() - t,
    }
    out["baselines"] = base
    print("  baselines " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in base.items()), flush=True)

    chord, chords = [], {}
    for points in [10, 20, 40] if quick else [10, 20, 40, 80, 160, 320]:
        t = time.time()
        chords[points] = chord_prior(model, x, y, slices, points, ALPHA, 0)
        seconds = time.time() - t
        chord.append(
            {
                "points": points,
                "forward_equivalents": 3 * points,
                "seconds": seconds,
                "seconds_per_point_over_seconds_per_mask": seconds
                / points
                / out["cost"]["masked_s_per_mask"],
            }
            | summary(lds(chords[points].float(), torch.zeros(len(y))))
        )
        print(
            f"  chord prior, {points} passes: {chord[-1]['mean']:.3f} ({seconds:.1f}s)", flush=True
        )
    with_prior = 40 if quick else 80
    variants = {
        "ols": ("ols", None),
        "ridge": ("ridge", None),
        "diffmeans": ("diffmeans", None),
        f"ridge+chord{with_prior}": ("ridge", chords[with_prior]),
        f"diffmeans+chord{with_prior}": ("diffmeans", chords[with_prior]),
        "ridge+grad16": ("ridge", grad16),
    }
    extra = {
        "ols": 0,
        "ridge": 0,
        "diffmeans": 0,
        f"ridge+chord{with_prior}": 3 * with_prior,
        f"diffmeans+chord{with_prior}": 3 * with_prior,
        "ridge+grad16": 48,
    }
    curve = {k: [] for k in variants}
    for n in counts:
        for name, (est, prior) in variants.items():
            try:
                w, b = fit(x_masks, y_masks, prior, est, n)
            except InputError as e:  # e.g. diffmeans before every component was ablated
                curve[name].append({"masks": n, "error": str(e)})
                continue
            curve[name].append(
                {"masks": n, "forward_equivalents": n + extra[name]} | summary(lds(w, b))
            )
        print(
            f"  {n:>6} masks: "
            + ", ".join(f"{k} {v[-1].get('mean', float('nan')):.3f}" for k, v in curve.items()),
            flush=True,
        )
    out["curve"] = curve
    out["chord_prior_alone"] = chord
    out["masks_to_reach"] = reach(curve | {"chord alone": chord})
    return out


def reach(curve) -> dict:
    """For each level (0.6, and what OLS reaches at 1k and 5k masks), the fewest masks of the
    grid at which each estimator's mean LDS is at least that level (None: never)."""
    ols = {r["masks"]: r.get("mean") for r in curve["ols"]}
    levels = {"0.6": 0.6} | {f"ols@{k}": ols[k] for k in (1000, 5000) if ols.get(k) is not None}
    return {
        lvl: {
            name: next((r["forward_equivalents"] for r in rows if r.get("mean", -1) >= v), None)
            for name, rows in curve.items()
        }
        for lvl, v in levels.items()
    }


def run_edits(model, bundle, calib, quick) -> dict:
    test = bundle.test
    acc0, per0 = accuracy(model, test, bundle.num_classes)
    pred = predictions(model, test.x)
    wrong = (pred != test.y).nonzero().squeeze(1)
    out = {"dense_accuracy": acc0, "fix": [], "forget": []}
    chosen = wrong[torch.randperm(len(wrong), generator=torch.Generator().manual_seed(0))][
        : 2 if quick else 5
    ]
    for i in chosen.tolist():
        m = copy.deepcopy(model)
        t = time.time()
        row = {"test_index": i, "label": int(test.y[i]), "predicted": int(pred[i])}
        # references and the accuracy guard come from training images; the target is the test image
        pool = data.Split(
            torch.cat([calib.x, test.x[i : i + 1]]), torch.cat([calib.y, test.y[i : i + 1]])
        )
        try:
            rec = api.edit(
                m, "coar-edit", data=pool, target=[len(calib.y)], num_classes=bundle.num_classes
            )
            row |= {
                "ablated": rec.info["ablated"],
                "skipped": rec.info["skipped"],
                "fixed": int(predictions(m, test.x[i : i + 1])[0]) == int(test.y[i]),
                "accuracy_after": accuracy(m, test, bundle.num_classes)[0],
            }
        except InputError as e:
            row["error"] = str(e)
        row["seconds"] = time.time() - t
        out["fix"].append(row)
        print(f"  fix {row}", flush=True)
    for k in [0] if quick else [0, 3, 7]:
        m = copy.deepcopy(model)
        t = time.time()
        row = {"class": k, "class_accuracy_before": per0[k]}
        try:
            rec = api.forget(m, k, calib, editor="coar-forget", num_classes=bundle.num_classes)
            acc, per = accuracy(m, test, bundle.num_classes)
            retained = [p for j, p in enumerate(per) if j != k]
            before = [p for j, p in enumerate(per0) if j != k]
            row |= {
                "ablated": rec.info["ablated"],
                "skipped": rec.info["skipped"],
                "class_accuracy_after": per[k],
                "retained_before": sum(before) / len(before),
                "retained_after": sum(retained) / len(retained),
            }
        except InputError as e:
            row["error"] = str(e)
        row["seconds"] = time.time() - t
        out["forget"].append(row)
        print(f"  forget {row}", flush=True)
    return out


def markdown(res: dict) -> str:
    lds, lines = res["lds"], []
    lines += [
        f"# COAR on Fashion-MNIST {res['arch']} ({lds['components']} components, {lds['examples']} test examples, "
        f"alpha {ALPHA}, LDS on {LDS_MASKS} fresh masks)",
        "",
        f"Machine: {res['machine']}. Command: `{res['command']}`",
        "",
        f"Cost per mask: masked {lds['cost']['masked_s_per_mask'] * 1e3:.2f} ms vs plain forward "
        f"{lds['cost']['plain_s_per_mask'] * 1e3:.2f} ms on the same {lds['cost']['images_per_forward']} "
        f"images per pass: **{lds['cost']['ratio']:.2f}x**",
        "",
        "## Mean LDS (p10) against masks",
        "",
        "| masks | " + " | ".join(lds["curve"]) + " |",
        "|---" * (len(lds["curve"]) + 1) + "|",
    ]
    counts = [r["masks"] for r in next(iter(lds["curve"].values()))]
    for i, n in enumerate(counts):
        cells = []
        for rows in lds["curve"].values():
            r = rows[i]
            cells.append(f"{r['mean']:.3f} ({r['p10']:.2f})" if "mean" in r else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "`+chordP` / `+grad16`: ridge or difference of means on top of a prior of P (16) backward "
        "passes, each counted as 3 forward-equivalents (forward + backward) below.",
        "",
        "## Baselines",
        "",
        "| baseline | mean LDS | p10 | forward-equivalents per example |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['mean']:.3f} | {v['p10']:.3f} | {v['forward_equivalents']} |"
        for k, v in lds["baselines"].items()
    ]
    lines += [
        "",
        "## Chord prior alone (the fewer-evaluations estimator, no masks)",
        "",
        "| backward passes | forward-equivalents | mean LDS | p10 | min | seconds (per pass / per mask) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['points']} | {r['forward_equivalents']} | {r['mean']:.3f} | {r['p10']:.3f} | {r['min']:.3f} | "
        f"{r['seconds']:.1f} ({r['seconds_per_point_over_seconds_per_mask']:.2f}) |"
        for r in lds["chord_prior_alone"]
    ]
    lines += [
        "",
        "## Forward-equivalents per example needed to reach a mean LDS level (grid points; masks + 3 per backward pass)",
        "",
        "| level | " + " | ".join(lds["masks_to_reach"]["0.6"]) + " |",
        "|---" * (len(lds["masks_to_reach"]["0.6"]) + 1) + "|",
    ]
    for lvl, row in lds["masks_to_reach"].items():
        lines.append(
            f"| {lvl} | "
            + " | ".join(str(v) if v is not None else "not reached" for v in row.values())
            + " |"
        )
    ed = res.get("edits")
    if ed:
        lines += [
            "",
            f"## COAR-Edit (test accuracy {ed['dense_accuracy']:.4f} before)",
            "",
            "| fix test example | label / predicted | ablated | fixed | test accuracy after |",
            "|---|---|---|---|---|",
        ]
        for r in ed["fix"]:
            lines.append(
                f"| {r['test_index']} | {r['label']} / {r['predicted']} | {r.get('ablated', '-')} | "
                f"{r.get('fixed', r.get('error'))} | {r.get('accuracy_after', float('nan')):.4f} |"
            )
        lines += [
            "",
            "| forget class | class acc before -> after | retained before -> after | ablated |",
            "|---|---|---|---|",
        ]
        for r in ed["forget"]:
            if "error" in r:
                lines.append(f"| {r['class']} | {r['error']} | | |")
                continue
            lines.append(
                f"| {r['class']} | {r['class_accuracy_before']:.4f} -> {r['class_accuracy_after']:.4f} | "
                f"{r['retained_before']:.4f} -> {r['retained_after']:.4f} | {r['ablated']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--only",
        choices=["lds", "edits"],
        default=None,
        help="re-run one part; the other is kept from the existing results file in --out",
    )
    ap.add_argument("--out", default=None, help=_results.out_help("coar"))
    args = ap.parse_args()
    torch.manual_seed(0)
    bundle = data.load_dataset("fashion-mnist", DATA)
    model = train.pretrained(args.arch, bundle).eval()
    calib = bundle.train.subset(2048, seed=0)
    test = bundle.test.subset(args.examples, seed=1)
    paths = default_targets(model, test.x[:1], bundle.num_classes)
    counts = (
        [100, 200, 500, 1000]
        if args.quick
        else [50, 100, 200, 350, 500, 1000, 2000, 5000, 10000, 20000]
    )
    res = {
        "arch": args.arch,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "command": "python benchmarks/coar.py --arch "
        + args.arch
        + (" --quick" if args.quick else ""),
    }
    stem = _results.out_dir(args.out, "coar") / f"coar_{args.arch}{'_quick' if args.quick else ''}"
    if args.only and stem.with_suffix(".json").exists():
        res = _results.read(stem.with_suffix(".json")) | {"machine": res["machine"]}
    if args.only != "edits":
        print(f"{args.arch}: LDS", flush=True)
        res["lds"] = run_lds(model, test.x, test.y, paths, counts, args.quick)
    if args.only != "lds":
        print(f"{args.arch}: edits", flush=True)
        res["edits"] = run_edits(model, bundle, calib, args.quick)
    _results.write(stem, res, markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
