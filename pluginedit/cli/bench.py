"""``pluginedit bench kernels``: kernel and end-to-end statistics benchmarks.

* The kernel table of ``pluginedit.ops.bench``: on the CPU the PyTorch reference vs the compiled
  csrc ops; on CUDA also the Triton kernels with GB/s, TFLOP/s and % of the device's peak.
* End to end: time to collect every layer's statistics of the zoo's ResNet-50 (random weights)
  divided by plain inference time on the same images. On CUDA the default is 2,000 images at
  224 px; on CPU a reduced run (see ``--images``/``--size``), stated in the output.

Results go to ``<out>/<device>.json`` with the device name and the torch/triton versions. From the
command line ``--out`` defaults to ``$PLUGINEDIT_BENCH_OUT/bench_kernels/`` when that is set, else
``bench-out/bench_kernels/`` in the current folder; ``python benchmarks/bench_kernels.py`` runs
the same benchmark with the rules of benchmarks/_results.py (the checkout's scratch folder, and a
stamp of machine, command, versions and commit on every result).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import torch

from .. import ops
from ..capture import Request, collect
from ..contrib.zoo import ResNet50
from ..core.files import written_whole
from ..ops.bench import cpu_suite, device_name, gpu_suite, print_table
from ..stats import ClassMoments, Gram

ENV = "PLUGINEDIT_BENCH_OUT"


def end_to_end(
    device: str, images: int, size: int, batch: int, classes: int, gram: bool, half: bool
) -> dict:
    """Seconds to collect every layer's statistics through the library path (``capture.collect``
    with ``ClassMoments`` on every conv/linear output, and with ``gram`` a ``Gram`` on every
    groups=1 conv/linear input) over ``images`` random images, divided by plain inference
    seconds on the same images."""
    model, x, y = _resnet_and_images(device, images, size, batch, classes)
    layers = {
        p: m for p, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    }

    def infer(n):
        for part in (x[:n],) if n else x.split(batch):
            model(part)

    def statistics(n):
        data = (x[:n], y[:n]) if n else (x, y)
        collect(model, data, _requests(layers, classes, gram), classes, batch_size=batch)

    t_inf = _timed(infer, device, half)
    t_stats = _timed(statistics, device, half)
    backend = ops.resolve("class_moments", x[:1])[0]
    return dict(
        images=len(x),
        size=size,
        batch=batch,
        classes=classes,
        gram=gram,
        autocast_bf16=half,
        layers=len(layers),
        backend=backend,
        inference_s=t_inf,
        stats_s=t_stats,
        ratio=t_stats / t_inf,
        path="capture.collect + stats classes",
    )


def _resnet_and_images(device: str, images: int, size: int, batch: int, classes: int):
    """The zoo's ResNet-50 (random weights, eval mode; channels_last on CUDA) and ``images``
    random images, rounded down to whole batches (at least one), with random labels."""
    model = ResNet50(3, 1000).to(device).eval()
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(0)
    nb = max(1, images // batch)
    x = torch.randn(nb * batch, 3, size, size, device=device, generator=gen)
    if device == "cuda":
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (nb * batch,), device=device, generator=gen)
    return model, x, y


def _requests(layers: dict, classes: int, gram: bool) -> list[Request]:
    """Fresh statistics: ``ClassMoments`` on every layer's output and, with ``gram``, a ``Gram``
    on every groups=1 layer's input."""
    reqs = [
        Request(
            p,
            ClassMoments(
                m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features, classes
            ),
            "output",
        )
        for p, m in layers.items()
    ]
    if gram:
        reqs += [
            Request(p, Gram.for_module(m), "input")
            for p, m in layers.items()
            if isinstance(m, torch.nn.Linear) or m.groups == 1
        ]
    return reqs


def _timed(fn, device: str, half: bool) -> float:
    """Seconds of ``fn(None)`` (every image) after a warm-up ``fn(2)`` (two images), under
    inference mode and, with ``half``, bf16 autocast."""
    ctx = (
        torch.autocast(device, dtype=torch.bfloat16)
        if half
        else torch.autocast(device, enabled=False)
    )
    with torch.inference_mode(), ctx:
        fn(2)  # warm-up: cudnn, the allocator, Triton compilation
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(None)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t


def parser(results=None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pluginedit bench kernels", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "suite",
        nargs="?",
        default="kernels",
        choices=["kernels"],
        help="what to benchmark (only 'kernels' so far)",
    )
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument(
        "--images", type=int, default=None, help="end-to-end images (cuda 2000, cpu 16)"
    )
    ap.add_argument(
        "--size", type=int, default=None, help="end-to-end image size (cuda 224, cpu 224)"
    )
    ap.add_argument("--batch", type=int, default=None, help="end-to-end batch (cuda 250, cpu 8)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument(
        "--gram", action="store_true", help="also time K3 Gram of every layer's input end to end"
    )
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end figure")
    ap.add_argument(
        "--out",
        default=None,
        help=results.out_help("bench_kernels", "folder for <device>.json")
        if results is not None
        else f"folder for <device>.json (default: ${ENV}/bench_kernels/ if "
        "set, else bench-out/bench_kernels/ in the current folder)",
    )
    return ap


def run(args) -> dict:
    """The kernel table and the end-to-end figure, printed; returns them with the device and
    versions."""
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    name = device_name(device)
    threads = torch.get_num_threads()
    print(
        f"device: {name} ({device}, {threads} CPU threads); torch {torch.__version__}; "
        f"backends for class_moments: {ops.available('class_moments')}"
    )
    rows: list[dict] = []
    cpu_suite(rows)
    if device == "cuda":
        gpu_suite(rows)
    print_table(rows)
    e2e = None
    if not args.no_e2e:
        gpu = device == "cuda"
        images, size = args.images or (2000 if gpu else 16), args.size or 224
        batch = min(args.batch or (250 if gpu else 8), images)
        e2e = end_to_end(device, images, size, batch, args.classes, args.gram, half=gpu)
        if args.gram is False and gpu:  # on GPU also report the figure with Gram statistics
            e2e = [e2e, end_to_end(device, images, size, batch, args.classes, True, half=True)]
        for r in e2e if isinstance(e2e, list) else [e2e]:
            print(
                f"end-to-end ResNet-50, {r['images']} images at {r['size']} px "
                f"(batch {r['batch']}, "
                f"{r['layers']} layers, K2{' + K3' if r['gram'] else ''} via {r['backend']}): "
                f"statistics {r['stats_s']:.2f} s / inference {r['inference_s']:.2f} s = "
                f"{r['ratio']:.2f} (goal <= 1.25)"
            )
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return dict(
        device=name,
        device_type=device,
        cpu_threads=threads,
        torch=torch.__version__,
        triton=triton_version,
        cuda=torch.version.cuda,
        date=time.strftime("%Y-%m-%dT%H:%M:%S"),
        kernels=rows,
        end_to_end=e2e,
    )


def _out_dir(out: str | None) -> Path:
    folder = Path(out) if out else Path(os.environ.get(ENV) or "bench-out") / "bench_kernels"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def main(argv=None, results=None) -> int:
    """Run the benchmark and write ``<out>/<device>.json``. ``results`` (benchmarks/_results.py,
    passed by the script beside it) chooses the folder and stamps the result."""
    args = parser(results).parse_args(argv)
    result = run(args)
    out = results.out_dir(args.out, "bench_kernels") if results is not None else _out_dir(args.out)
    path = out / (re.sub(r"[^A-Za-z0-9._-]+", "_", result["device"]).strip("_") + ".json")
    if results is not None:
        results.write_json(path, result, indent=2)
    else:
        with written_whole(path) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0
