"""Several scorers in one pass over the data vs one pass each.

    python benchmarks/one_pass.py [--samples 2048] [--repeats 3]

On the Fashion-MNIST ResNet and VGG (``train.pretrained``), scores with witness, fidelity and
tvs from one ``pe.score_many`` pass and from three ``pe.score`` calls; checks that the scores are
identical and reports the best-of-``repeats`` wall times and their ratio. Writes one_pass.{json,md}
to --out (default: a scratch folder, see benchmarks/_results.py; --out benchmarks/results updates
the committed results)."""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import _results  # the helper beside this script
import torch

import pluginedit as pe
from pluginedit.contrib import data, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCORERS = ("witness", "fidelity", "tvs")


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(arch: str, bundle, samples: int, repeats: int) -> dict:
    model = train.pretrained(arch, bundle)
    calib = bundle.train.subset(samples)
    one, together = _best(lambda: pe.score_many(model, list(SCORERS), data=calib), repeats)
    separate = 0.0
    identical = True
    for name in SCORERS:
        t, alone = _best(lambda: pe.score(model, name, data=calib), repeats)
        separate += t
        identical &= all(torch.equal(alone[p], together[name][p]) for p in alone)
    return {
        "arch": arch,
        "samples": samples,
        "one_pass_s": one,
        "separate_s": separate,
        "ratio": one / separate,
        "identical": identical,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--out", default=None, help=_results.out_help("one_pass"))
    args = ap.parse_args(argv)
    out = _results.out_dir(args.out, "one_pass")
    bundle = data.load_dataset("fashion-mnist", args.data_dir)
    rows = [measure(a, bundle, args.samples, args.repeats) for a in ("resnet", "vgg")]
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [
        "# Three scorers (witness, fidelity, tvs): one pass vs three passes",
        "",
        f"Command: `python benchmarks/one_pass.py --samples {args.samples} --repeats {args.repeats}`; "
        f"machine: {machine}; best of {args.repeats}.",
        "",
        "| model | samples | one pass s | three passes s | ratio | scores identical |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['arch']} | {r['samples']} | {r['one_pass_s']:.2f} | {r['separate_s']:.2f} | "
        f"{r['ratio']:.2f} | {r['identical']} |"
        for r in rows
    ]
    _results.write(
        out / "one_pass", {"machine": machine, "rows": rows}, "\n".join(lines) + "\n", indent=2
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
