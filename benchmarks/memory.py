"""Peak memory of scoring against the number of samples: statistics memory must not grow with it.

    python benchmarks/memory.py [--samples 1000 20000] [--scorers fidelity witness]
                                [--modes split dataset] [--malloc pinned|default] [--data-dir ../shared/data]

Each (scorer, samples, data mode) runs in a fresh Python process: the zoo VGG
(``zoo.build('vgg', 1, 10, widths=(16, 32, 64), hidden=64)``, random weights) scores that many
Fashion-MNIST training images with ``pe.score``. Just before scoring the process's RSS is read
and its high-water mark reset (``/proc/self/clear_refs`` = 5), so the peak is that of scoring
(plus what is resident: the interpreter, torch, the data). Data modes:

* ``split``: what the CLI holds: the whole data set in memory as float tensors and a
  ``Split`` subset of ``samples`` images (its copy is the caller's data: 3.1 KB per image);
* ``dataset``: a ``torch.utils.data.Dataset`` decoding images one by one from the uint8 idx
  array (47 MB whatever ``samples`` is), so nothing resident scales with ``samples``.

Reported per run: RSS before scoring, peak RSS while scoring, their difference (what scoring
itself adds), and the 20k / 1k ratios. Writes <name>.{json,md} (default memory) to --out (default: a
scratch folder, see benchmarks/_results.py; --out benchmarks/results updates the committed results).

Allocator: glibc raises its mmap threshold each time a large block is freed, after which
batch-sized buffers come from the heap, whose fragmentation sets the high-water mark. With
that default the peak of one and the same run (witness, 1k samples) came out 78 and 117 MiB
above the baseline in two runs: noise larger than the 10 % being tested, and not ordered by the
number of samples. ``--malloc pinned`` (the default here) fixes the threshold at 128 KiB in the
child processes (``MALLOC_MMAP_THRESHOLD_=131072``), so freed batch buffers go back to the
system and the peak shows what the library holds; ``--malloc default`` measures glibc as is."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import _results  # the helper beside this script

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _status() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MiB."""
    text = Path("/proc/self/status").read_text()
    return {
        k: int(re.search(rf"{k}:\s+(\d+) kB", text).group(1)) / 1024 for k in ("VmRSS", "VmHWM")
    }


def _dataset(data_dir: str, samples: int):
    """Fashion-MNIST train images decoded per item from the uint8 idx array (normalised with the
    same train mean/std as ``load_dataset``): no float copy of the data set exists."""
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    from pluginedit.contrib.data import read_idx

    root = Path(data_dir) / "fashion-mnist"
    images = read_idx(root / "train-images-idx3-ubyte.gz")
    labels = torch.from_numpy(read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64))
    scaled = images.reshape(len(images), -1)
    mean = float(np.mean(scaled, dtype=np.float64) / 255)
    std = float(np.std(scaled, dtype=np.float64) / 255)

    class IdxImages(Dataset):
        def __len__(self):
            return samples

        def __getitem__(self, i):
            x = torch.from_numpy(images[i].astype(np.float32)).div_(255).sub_(mean).div_(std)
            return x.unsqueeze(0), labels[i]

    return IdxImages()


def child(scorer: str, samples: int, mode: str, data_dir: str) -> dict:
    import torch

    import pluginedit as pe
    from pluginedit.contrib import data, zoo

    torch.manual_seed(0)
    model = zoo.build("vgg", 1, 10, widths=(16, 32, 64), hidden=64).eval()
    if mode == "split":
        bundle = data.load_dataset("fashion-mnist", data_dir)
        calib = bundle.train.subset(samples)
    else:
        bundle, calib = None, _dataset(data_dir, samples)
    gc.collect()
    before = _status()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    t0 = time.perf_counter()
    scores = pe.score(model, scorer, data=calib, num_classes=10)
    seconds = time.perf_counter() - t0
    peak = _status()["VmHWM"]
    assert all(torch.isfinite(v).all() for v in scores.values())
    del bundle
    return dict(
        scorer=scorer,
        samples=samples,
        mode=mode,
        rss_before_mb=before,
        peak_mb=peak,
        scoring_mb=peak - before,
        seconds=seconds,
    )


def _run(scorer: str, samples: int, mode: str, data_dir: str, malloc: str) -> dict:
    cmd = [sys.executable, __file__, "--child", scorer, str(samples), mode, "--data-dir", data_dir]
    env = dict(os.environ) | ({"MALLOC_MMAP_THRESHOLD_": "131072"} if malloc == "pinned" else {})
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _markdown(rows: list[dict], ratios: list[dict], command: str, meta: dict) -> str:
    lines = [
        "# Peak memory of scoring: 1k vs 20k samples",
        "",
        f"Command: `{command}`; machine: {meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}. "
        "Each run in a fresh process; the high-water mark is reset just before `pe.score`, so "
        "'peak' is the peak while scoring (resident data and libraries included) and "
        "'scoring adds' is peak minus the RSS just before. Model: zoo VGG widths (16, 32, 64), "
        "hidden 64, random weights; Fashion-MNIST 28x28; batch 256. glibc malloc: "
        f"{meta['malloc']} (see the script's docstring). The machine was shared with other "
        "benchmarks: seconds are noisy.",
        "",
        "| scorer | data | samples | RSS before MiB | peak MiB | scoring adds MiB | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scorer']} | {r['mode']} | {r['samples']} | {r['rss_before_mb']:.1f} | "
            f"{r['peak_mb']:.1f} | {r['scoring_mb']:.1f} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "| scorer | data | peak ratio (large / small) | scoring-adds ratio | within 10 % |",
        "|---|---|---|---|---|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['scorer']} | {r['mode']} | {r['peak_ratio']:.3f} | {r['scoring_ratio']:.3f} | "
            f"{'yes' if r['within_10pct'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, nargs=2, default=[1000, 20000])
    ap.add_argument("--scorers", nargs="+", default=["fidelity", "witness"])
    ap.add_argument(
        "--modes", nargs="+", default=["split", "dataset"], choices=["split", "dataset"]
    )
    ap.add_argument(
        "--malloc",
        default="pinned",
        choices=["pinned", "default"],
        help="pinned: MALLOC_MMAP_THRESHOLD_=131072 in the measured processes",
    )
    ap.add_argument("--data-dir", default=str(DATA))
    ap.add_argument("--out", default=None, help=_results.out_help("memory"))
    ap.add_argument("--name", default="memory", help="results file name: NAME.json and NAME.md")
    ap.add_argument("--child", nargs=3, metavar=("SCORER", "SAMPLES", "MODE"), default=None)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2], args.data_dir)))
        return 0
    import torch

    small, large = args.samples
    rows, ratios = [], []
    for scorer in args.scorers:
        for mode in args.modes:
            a, b = (_run(scorer, n, mode, args.data_dir, args.malloc) for n in (small, large))
            rows += [a, b]
            ratios.append(
                dict(
                    scorer=scorer,
                    mode=mode,
                    peak_ratio=b["peak_mb"] / a["peak_mb"],
                    scoring_ratio=b["scoring_mb"] / max(a["scoring_mb"], 1e-9),
                )
            )
            ratios[-1]["within_10pct"] = (
                ratios[-1]["peak_ratio"] <= 1.10 and ratios[-1]["scoring_ratio"] <= 1.10
            )
            print(json.dumps(ratios[-1]), flush=True)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    meta = dict(
        cpu=cpu,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        malloc="MALLOC_MMAP_THRESHOLD_=131072" if args.malloc == "pinned" else "glibc defaults",
    )
    command = "python benchmarks/memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = _results.out_dir(args.out, "memory") / args.name
    _results.write(
        out,
        dict(meta=meta, command=command.strip(), rows=rows, ratios=ratios),
        _markdown(rows, ratios, command.strip(), meta),
        indent=2,
    )
    print(_markdown(rows, ratios, command.strip(), meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
