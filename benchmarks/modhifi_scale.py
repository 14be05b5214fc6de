"""ModHiFi-P at ImageNet scale on a CPU, one command:

    python benchmarks/modhifi_scale.py [--part time|memory|both] [--images 512]
        [--memory-images 256] [--px 224] [--ratio 0.5] [--out DIR]

time: ResNet-50 (transformers ``ResNetForImageClassification``, the resnet-50 config, random
init) on ``--images`` random 224 px images, one thread, side by side in one process: one plain
forward over the images, the peer (torch-pruning's MetaPruner with L1 magnitude at the same
ratio, head kept), and ``modhifi-p`` at ``--ratio`` with all the images as calibration data; its
breakdown from the record (scores: the pair-statistics pass and the scores; statistics: the
delta* pass; solves; surgery: the removal plan on a copy and the removal; recalibration: BN) and
the acceptance ratio  modhifi-p / (forward + peer)  (issue 24: <= 3).

memory: VGG-16 (torchvision's layout, built here: 13 convs, max-pooling, 7 x 7 adaptive pooling,
classifier Linear(25088, 4096), Linear(4096, 4096), Linear(4096, 1000); random init) at 224 px,
``--memory-images`` calibration images: ``modhifi-p`` at ``--ratio`` in a child process, whose
peak resident set size (``ru_maxrss``) is reported (issue 24: <= 6 GB), with the delta* modes it
used (``exact``: the Gram of the kept inputs; ``position``: per-position Grams of the kept
channels, for ``classifier.0`` whose kept Gram exceeds ``PLUGINEDIT_GRAM_BUDGET``).

Writes modhifi_scale.{json,md} to --out (default: a scratch folder, see benchmarks/_results.py;
--out benchmarks/results updates the committed results). ``--part`` other than both reads the
other part back from an earlier result in the same folder when there is one;
``--summarise-only`` rewrites the .md from the .json there.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
import warnings

import _results  # the helper beside this script
import torch
from torch import nn

NAME = "modhifi_scale"
CFG_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """torchvision's vgg16 layout (no BatchNorm), random init."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, cin = [], 3
        for v in CFG_VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def resnet50():
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(num_labels=1000)).eval()


def images(n: int, px: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, px, px, generator=g), torch.zeros(n, dtype=torch.long)


def modhifi(model, x, y, ratio: float):
    import pluginedit as pe
    from pluginedit.linalg import IllConditionedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)  # random weights: dead units
        t = time.perf_counter()
        rec = pe.edit(model, "modhifi-p", None, data=(x, y), ratio=ratio, calib_samples=len(y))
        return time.perf_counter() - t, rec.info


def peer(model, example, ratio: float) -> float:
    """torch-pruning's MetaPruner, L1 magnitude, the same ratio, the head kept: one step."""
    import torch_pruning as tp

    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[model.classifier[-1]],
        output_transform=lambda out: out.logits.sum(),
    )
    pruner.step()
    return time.perf_counter() - t


def part_time(n: int, px: int, ratio: float) -> dict:
    torch.manual_seed(0)
    model = resnet50()
    x, y = images(n, px)
    with torch.no_grad():
        t = time.perf_counter()
        for part in x.split(64):
            model(part)
        forward = time.perf_counter() - t
    print(f"forward over {n} images: {forward:.1f} s", flush=True)
    t_peer = peer(copy.deepcopy(model), x[:1], ratio)
    print(f"peer (MetaPruner, L1): {t_peer:.1f} s", flush=True)
    total, info = modhifi(model, x, y, ratio)
    print(f"modhifi-p: {total:.1f} s {info['seconds']}", flush=True)
    return {
        "model": "transformers ResNetForImageClassification (resnet-50 config), random init",
        "images": n,
        "px": px,
        "ratio": ratio,
        "threads": torch.get_num_threads(),
        "forward_s": forward,
        "peer_prune_s": t_peer,
        "modhifi_p_s": total,
        "ratio_to_forward_plus_peer": total / (forward + t_peer),
        "breakdown_s": info["seconds"],
        "params_before": info["params_before"],
        "params_after": info["params_after"],
        "compensation_modes": info["compensation_modes"],
        "ill_conditioned_solves": info["ill_conditioned_solves"],
        "sequential_gmacs": info["sequential_gmacs"],
        "sequential_passes": info["sequential_passes"],
    }


def child_memory(n: int, px: int, ratio: float) -> None:
    """Run in the child: VGG-16 modhifi-p; prints one JSON line."""
    torch.manual_seed(0)
    model = VGG16().eval()
    x, y = images(n, px)
    total, info = modhifi(model, x, y, ratio)
    keys = ("seconds", "compensation_modes", "uncompensated", "params_before", "params_after")
    keys += ("sequential_gmacs", "sequential_passes")
    print(json.dumps({"modhifi_p_s": total} | {k: info[k] for k in keys}), flush=True)


def part_memory(n: int, px: int, ratio: float) -> dict:
    argv = [sys.executable, __file__, "--child", "--memory-images", str(n), "--px", str(px)]
    argv += ["--ratio", str(ratio)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the VGG-16 child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    got = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"VGG-16: peak RSS {peak_kb / 2**20:.2f} GiB, {got}", flush=True)
    return {
        "model": "VGG-16 (torchvision layout, built in benchmarks/modhifi_scale.py), random init",
        "images": n,
        "px": px,
        "ratio": ratio,
        "peak_rss_gib": peak_kb / 2**20,
        "modhifi_p_s": got["modhifi_p_s"],
        "breakdown_s": got["seconds"],
        "compensation_modes": got["compensation_modes"],
        "uncompensated": got["uncompensated"],
        "params_before": got["params_before"],
        "params_after": got["params_after"],
        "sequential_gmacs": got["sequential_gmacs"],
        "sequential_passes": got["sequential_passes"],
    }


def _refit(r: dict) -> str:
    """What refit='auto' (the default) chose, from the record."""
    est = r.get("sequential_gmacs")
    if not est:
        return ""
    how = "sequential" if r.get("sequential_passes") else "dense (delta* from the dense inputs)"
    return f" refit='auto' estimated the sequential refit at {est[0]:,.0f} GMAC and ran: {how}."


def markdown(res: dict) -> str:
    lines = ["# ModHiFi-P at scale (CPU, random weights)", ""]
    t = res.get("time")
    if t:
        b = t["breakdown_s"]
        lines += [
            f"## Time: ResNet-50, {t['images']} images at {t['px']} px, ratio {t['ratio']}, "
            f"{t['threads']} thread(s)",
            "",
            "| | seconds |",
            "|---|---|",
            f"| one plain forward over the images | {t['forward_s']:.1f} |",
            f"| peer: torch-pruning MetaPruner, L1 | {t['peer_prune_s']:.1f} |",
            f"| **modhifi-p** | **{t['modhifi_p_s']:.1f}** |",
            *(f"| &nbsp; {k} | {v:.1f} |" for k, v in b.items()),
            "",
            f"modhifi-p / (forward + peer) = **{t['ratio_to_forward_plus_peer']:.2f}** "
            "(target <= 3); parameters "
            f"{t['params_before'] / 1e6:.1f} M -> {t['params_after'] / 1e6:.1f} M; delta* modes "
            f"{t['compensation_modes']}.{_refit(t)}",
            "",
            "Parts: *scores* = the pass collecting pair statistics (the first half of the images: "
            "a forward and each layer's weight gradient) and the fidelity scores; *statistics* = "
            "the delta* pass (the other half: a forward, the Grams of the kept inputs and their "
            "cross products with the kept outputs); *solves* = the refits (Cholesky); *surgery* = "
            "the removal planned on a copy, then made, with torch-pruning; *recalibration* = BN "
            "statistics re-estimated on all the images through the pruned model. The machine is "
            "shared: its load moves every figure by tens of percent.",
            "",
        ]
    m = res.get("memory")
    if m:
        lines += [
            f"## Memory: VGG-16, {m['images']} images at {m['px']} px, ratio {m['ratio']}",
            "",
            f"Peak RSS of the child process: **{m['peak_rss_gib']:.2f} GiB** (target <= 6 GB); "
            f"{m['modhifi_p_s']:.0f} s; delta* modes {m['compensation_modes']}; "
            f"parameters {m['params_before'] / 1e6:.1f} M -> {m['params_after'] / 1e6:.1f} M."
            f"{_refit(m)}",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["time", "memory", "both"], default="both")
    ap.add_argument("--images", type=int, default=512, help="ResNet-50 calibration images")
    ap.add_argument("--memory-images", type=int, default=256, help="VGG-16 calibration images")
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--summarise-only", action="store_true", help="rewrite the .md from the .json in --out"
    )
    ap.add_argument("--out", default=None, help=_results.out_help(NAME))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        child_memory(args.memory_images, args.px, args.ratio)
        return 0
    folder = _results.out_dir(args.out, NAME)
    earlier = folder / f"{NAME}.json"
    res = {}
    if args.summarise_only:  # the measured results and their stamp, only the .md re-rendered
        data = _results.read(earlier)
        _results.write_markdown(folder / f"{NAME}.md", markdown(data), data["stamp"])
        return 0
    if args.part != "both" and earlier.exists():
        res = {k: v for k, v in _results.read(earlier).items() if k in ("time", "memory")}
    if args.part in ("time", "both"):
        res["time"] = part_time(args.images, args.px, args.ratio)
    if args.part in ("memory", "both"):
        res["memory"] = part_memory(args.memory_images, args.px, args.ratio)
    _results.write(folder / NAME, res, markdown(res))
    print(f"wrote {folder / NAME}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
