"""Rectification evidence, one command:  python benchmarks/rectify.py [--quick]

The trojaned Fashion-MNIST VGG (``contrib.backdoor.trojaned``: 10 % of the non-target training
images carry a 4 px checkerboard and are relabelled 0). Pairs (clean, triggered) come from the
training split; attack success rate (ASR: triggered non-target test images predicted 0) and clean
accuracy on the 10k test split. Rows: the trojaned model, fine-tuning on the n pairs (n = 1, 20),
static rank-one (n = 1), dynamic rectify (n = 1, 20), direct low-rank (n = 1, 20), COAR-Edit
(n = 20), and static / dynamic n = 1 with values read after the block's BN + ReLU (projected
optimisation; ``--only projected`` re-runs just these rows into the existing results). For the dynamic n = 1 edit: ASR at other trigger positions and opacities. Robustness:
mean accuracy over the corruption suite (6 corruptions x 3 severities, 2,000 test images) for
every row. 1-layer interpolation of the static edit, t in 0 .. 1: ASR, clean accuracy, corrupted
accuracy and corrupted ASR (plot). Writes rectify.{json,md,png} to --out (default: a scratch folder,
see benchmarks/_results.py; --out benchmarks/results updates the committed results); ``--only``
reads the existing results from --out."""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import _results  # the helper beside this script
import torch

import pluginedit as pe
from pluginedit.capture import Split
from pluginedit.contrib import backdoor, data, train
from pluginedit.contrib.corruptions import CORRUPTIONS, corrupt
from pluginedit.core.errors import InputError
from pluginedit.editors.robust import interpolate
from pluginedit.evaluate import predictions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEVERITIES = (1, 2, 3)


class Bench:
    def __init__(self, quick: bool):
        self.bundle = data.load_dataset("fashion-mnist", DATA)
        self.trigger = backdoor.calibrated(self.bundle)
        self.model = backdoor.trojaned("vgg", self.bundle, target=0, trigger=self.trigger).eval()
        test = self.bundle.test
        self.test = test.subset(2000, seed=0) if quick else test
        self.triggered = backdoor.triggered_test(self.bundle, 0, self.trigger)
        self.calib = self.bundle.train.subset(2048, seed=0)
        self.lo, self.hi = float(self.bundle.train.x.min()), float(self.bundle.train.x.max())
        self.robust_x = test.subset(2000 if not quick else 500, seed=1)
        self.robust_t = self.triggered.subset(2000 if not quick else 500, seed=1)

    def asr(self, model, split=None) -> float:
        split = split or self.triggered
        return float((predictions(model, split.x) == 0).float().mean())

    def acc(self, model) -> float:
        return float((predictions(model, self.test.x) == self.test.y).float().mean())

    def corrupted(self, model) -> dict:
        """Mean accuracy on corrupted test images, and mean ASR on corrupted triggered images."""
        accs, asrs = [], []
        for name in CORRUPTIONS:
            for sev in SEVERITIES:
                x = corrupt(self.robust_x.x, name, sev, seed=sev, lo=self.lo, hi=self.hi)
                accs.append(float((predictions(model, x) == self.robust_x.y).float().mean()))
                t = corrupt(self.robust_t.x, name, sev, seed=sev, lo=self.lo, hi=self.hi)
                asrs.append(float((predictions(model, t) == 0).float().mean()))
        return {"corrupted_accuracy": sum(accs) / len(accs), "corrupted_asr": sum(asrs) / len(asrs)}

    def pairs(self, n: int) -> pe.Pairs:
        clean, trig, y = backdoor.pairs(self.bundle.train, n, 0, self.trigger, seed=1)
        return pe.Pairs(clean, trig, y)

    def row(self, name, n, fn) -> dict:
        m = copy.deepcopy(self.model)
        t = time.time()
        out = {"method": name, "n": n}
        try:
            info = fn(m) or {}
        except InputError as e:
            return out | {"error": str(e), "seconds": time.time() - t}
        out |= {
            "seconds": time.time() - t,
            "asr": self.asr(m),
            "clean_accuracy": self.acc(m),
        } | info
        out |= self.corrupted(m)
        print(f"  {out}", flush=True)
        return out | {"_model": m}


def finetune(bench, n):
    def run(m):
        p = bench.pairs(n)
        split = Split(torch.cat([p.clean, p.corrupted]), torch.cat([p.y, p.y]))
        train.fit(m, split, epochs=max(5, 200 // len(split.y)), lr=1e-3, seed=0)

    return run


def editor(bench, name, n, **opts):
    def run(m):
        rec = pe.edit(m, name, data=bench.calib, pairs=bench.pairs(n), **opts)
        return {
            "layers": [e["layer"] for e in rec.info.get("edits", []) if e["kept"]]
            or rec.info.get("layer")
        }

    return run


def coar(bench, n):
    def run(m):
        p = bench.pairs(n)
        pool = Split(torch.cat([bench.calib.x, p.corrupted]), torch.cat([bench.calib.y, p.y]))
        rec = pe.edit(
            m, "coar-edit", data=pool, target=list(range(len(bench.calib.y), len(pool.y)))
        )
        return {"ablated": rec.info["ablated"]}

    return run


def generalisation(bench, model) -> dict:
    out = {}
    for pos in backdoor.POSITIONS:
        out[f"position {pos}"] = bench.asr(
            model, backdoor.triggered_test(bench.bundle, 0, bench.trigger.at(position=pos))
        )
    for op in (0.3, 0.5, 0.7, 1.0):
        out[f"opacity {op}"] = bench.asr(
            model, backdoor.triggered_test(bench.bundle, 0, bench.trigger.at(opacity=op))
        )
    return out


def interpolation(bench, static_model) -> list[dict]:
    layer = "features.17"
    params = dict(bench.model.named_parameters())
    original = {k: v.detach().clone() for k, v in params.items() if k.startswith(layer + ".")}
    edited = {k: dict(static_model.named_parameters())[k].detach().clone() for k in original}
    rows = []
    for t in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        m = copy.deepcopy(bench.model)
        interpolate(m, original, edited, t)
        rows.append(
            {"t": t, "asr": bench.asr(m), "clean_accuracy": bench.acc(m)} | bench.corrupted(m)
        )
        print(f"  1-LI {rows[-1]}", flush=True)
    return rows


def markdown(res) -> str:
    lines = [
        "# Rectifying the trojaned Fashion-MNIST VGG",
        "",
        f"Machine: {res['machine']}. Command: `{res['command']}`",
        "",
        "| method | n | ASR | clean acc | corrupted acc | corrupted ASR | seconds | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['method']} | {r['n']} | failed: {r['error']} | | | | {r['seconds']:.0f} | |"
            )
            continue
        note = r.get("layers") or (f"{r['ablated']} ablated" if "ablated" in r else "")
        lines.append(
            f"| {r['method']} | {r['n']} | {r['asr']:.4f} | {r['clean_accuracy']:.4f} | {r['corrupted_accuracy']:.4f} | "
            f"{r['corrupted_asr']:.4f} | {r['seconds']:.0f} | {note} |"
        )
    lines += [
        "",
        "## Dynamic n = 1: ASR at other trigger positions and opacities (trojaned model in brackets)",
        "",
        "| trigger | ASR after | ASR trojaned |",
        "|---|---|---|",
    ]
    for k, v in res["generalisation"]["edited"].items():
        lines.append(f"| {k} | {v:.4f} | {res['generalisation']['trojaned'][k]:.4f} |")
    lines += [
        "",
        "## 1-layer interpolation of the static edit (features.17)",
        "",
        "| t | ASR | clean acc | corrupted acc | corrupted ASR |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['t']} | {r['asr']:.4f} | {r['clean_accuracy']:.4f} | {r['corrupted_accuracy']:.4f} | {r['corrupted_asr']:.4f} |"
        for r in res["interpolation"]
    ]
    lines += ["", res["monotone"], ""]
    return "\n".join(lines)


def monotone(rows) -> str:
    asr = [r["asr"] for r in rows]
    acc = [r["corrupted_accuracy"] for r in rows]
    dec = all(b <= a + 1e-9 for a, b in zip(asr, asr[1:]))
    return (
        f"ASR along t is {'monotone non-increasing' if dec else 'not monotone'}; corrupted accuracy along t "
        f"goes {acc[0]:.4f} -> {acc[-1]:.4f} ({'monotone' if all(b <= a + 1e-9 for a, b in zip(acc, acc[1:])) or all(b >= a - 1e-9 for a, b in zip(acc, acc[1:])) else 'not monotone'})."
    )


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(t, [1 - r["asr"] for r in rows], "o-", label="edit success (1 - ASR)")
    ax.plot(t, [1 - r["corrupted_asr"] for r in rows], "s--", label="edit success, corrupted")
    ax.plot(t, [r["clean_accuracy"] for r in rows], "^-", label="clean accuracy")
    ax.plot(t, [r["corrupted_accuracy"] for r in rows], "v--", label="corrupted accuracy")
    ax.set_xlabel("t (1-layer interpolation)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _results.save_figure(fig, path, dpi=120)


PROJECTED = {"values": "block"}


def projected_rows(b) -> list[dict]:
    rows = []
    for name, ed in (
        ("static rank-one, projected", "rank-one"),
        ("dynamic rectify, projected", "rectify"),
    ):
        r = b.row(name, 1, editor(b, ed, 1, **PROJECTED))
        r.pop("_model", None)
        rows.append(r)
    return rows


def only_projected(b, stem: Path) -> None:
    res = _results.read(stem.with_suffix(".json"))
    res["rows"] = [r for r in res["rows"] if "projected" not in r["method"]] + projected_rows(b)
    _results.write(stem, res, markdown(res))
    print(markdown(res))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--only",
        choices=["projected"],
        default=None,
        help="re-run the projected rows into the existing results in --out",
    )
    ap.add_argument("--out", default=None, help=_results.out_help("rectify"))
    args = ap.parse_args()
    stem = _results.out_dir(args.out, "rectify") / ("rectify_quick" if args.quick else "rectify")
    torch.manual_seed(0)
    b = Bench(args.quick)
    if args.only:
        return only_projected(b, stem)
    base = {
        "method": "trojaned",
        "n": 0,
        "seconds": 0.0,
        "asr": b.asr(b.model),
        "clean_accuracy": b.acc(b.model),
    } | b.corrupted(b.model)
    print(f"  {base}", flush=True)
    rows = [base]
    plan = [
        ("fine-tune", 1, finetune(b, 1)),
        ("fine-tune", 20, finetune(b, 20)),
        ("static rank-one", 1, editor(b, "rank-one", 1)),
        ("dynamic rectify", 1, editor(b, "rectify", 1)),
        ("dynamic rectify", 20, editor(b, "rectify", 20)),
        ("low-rank", 1, editor(b, "low-rank", 1)),
        ("low-rank", 20, editor(b, "low-rank", 20)),
        ("coar-edit", 20, coar(b, 20)),
    ]
    models = {}
    for name, n, fn in plan:
        r = b.row(name, n, fn)
        models[(name, n)] = r.pop("_model", None)
        rows.append(r)
    rows += projected_rows(b)
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "command": "python benchmarks/rectify.py" + (" --quick" if args.quick else ""),
        "rows": rows,
    }
    dyn = models.get(("dynamic rectify", 1))
    res["generalisation"] = {
        "trojaned": generalisation(b, b.model),
        "edited": generalisation(b, dyn) if dyn is not None else {},
    }
    res["interpolation"] = interpolation(b, models[("static rank-one", 1)])
    res["monotone"] = monotone(res["interpolation"])
    _results.write(stem, res, markdown(res))
    plot(res["interpolation"], stem.with_suffix(".png"))
    print(markdown(res))


if __name__ == "__main__":
    main()
