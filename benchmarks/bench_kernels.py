"""``pluginedit bench kernels``: kernel and end-to-end statistics benchmarks.

* CPU: the PyTorch reference vs the compiled csrc ops (same run, speed-up reported).
* GPU (when CUDA is available): ``triton.testing.do_bench`` timings of the Triton kernels with
  GB/s and % of the device's memory bandwidth (K2), TFLOP/s and % of peak (K3), against the
  PyTorch reference and, for K3, unfold + torch.matmul.
* End to end: time to collect every layer's statistics of the zoo's ResNet-50 (random weights)
  divided by plain inference time on the same images. On CUDA the default is the issue's
  2,000 images at 224 px; on CPU a reduced run (see ``--images``/``--size``), stated in the output.

Results go to ``<out>/<device>.json`` with the device name, torch/triton versions and the stamp of
``_results.py``; ``--out`` defaults to a scratch folder (``$PLUGINEDIT_BENCH_OUT/bench_kernels/``
or ``bench-out/bench_kernels/``), ``--out benchmarks/results`` updates the committed results.
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import re
import time
from pathlib import Path

import torch

from pluginedit import ops as kernels

try:
    import _results                    # the helper beside this script
except ImportError:                    # loaded by path (`pluginedit bench kernels`): benchmarks/ not on sys.path
    _spec = importlib.util.spec_from_file_location("_results", Path(__file__).resolve().with_name("_results.py"))
    _results = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_results)

# Nominal peaks (dense, no sparsity) by device-name substring: bytes/s and FLOP/s per input kind.
# H100 numbers from the issue (SXM); others from vendor sheets. Unknown devices report no %.
PEAKS = {
    "H100": {"hbm": 3.35e12, "tf32": 494e12, "bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H200": {"hbm": 4.8e12, "tf32": 494e12, "bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"hbm": 2.0e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
}

# ResNet-50 activation shapes (batch 256 on GPU): the outputs of the four stages.
K2_GPU_SHAPES = [(256, 256, 56, 56), (256, 512, 28, 28), (256, 1024, 14, 14), (256, 2048, 7, 7)]
K3_GPU_CASES = [("conv3x3 64x64x56x56", (64, 64, 56, 56), dict(kernel_size=3, padding=1)),
                ("conv3x3 64x256x14x14", (64, 256, 14, 14), dict(kernel_size=3, padding=1)),
                ("conv1x1 64x1024x14x14", (64, 1024, 14, 14), dict(kernel_size=1)),
                ("linear 65536x1024", (65536, 1024), None)]
K2_CPU_SHAPES = [(32, 64, 56, 56), (64, 256, 14, 14)]
K3_CPU_CASES = [("conv3x3 8x64x14x14", (8, 64, 14, 14), dict(kernel_size=3, padding=1)),
                ("linear 4096x512", (4096, 512), None)]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _peaks(name: str) -> dict:
    return next((v for k, v in PEAKS.items() if k in name), {})


def best_seconds(fn, reps: int = 3, warmup: bool = True) -> float:
    """Best of ``reps`` wall-clock seconds (after one warm-up call with ``warmup``)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _time_cuda(fn) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3


def cpu_suite(rows: list[dict]) -> None:
    backends = [b for b in ("torch", "csrc") if b in kernels.available("class_moments")]
    g = torch.Generator().manual_seed(0)
    for shape in K2_CPU_SHAPES:
        x = torch.randn(shape, generator=g)
        lab = torch.randint(0, 10, (shape[0],), generator=g)
        times = {b: best_seconds(lambda b=b: kernels.call("class_moments", x, lab, 10, 0.05, backend=b))
                 for b in backends}
        for b, t in times.items():
            rows.append(dict(op="K2 class_moments", case="x".join(map(str, shape)) + " fp32", backend=b,
                             ms=t * 1e3, gbps=x.numel() * 4 / t / 1e9,
                             speedup=times["torch"] / t))
    for case, shape, kw in K3_CPU_CASES:
        x = torch.randn(shape, generator=g)
        times = {b: best_seconds(lambda b=b: kernels.call("gram", x, **(kw or {}), backend=b)) for b in backends}
        m, d = _rows_and_width(x, kw)
        for b, t in times.items():
            rows.append(dict(op="K3 gram", case=case + " fp32", backend=b, ms=t * 1e3,
                             tflops=2 * m * d * d / t / 1e12, speedup=times["torch"] / t))


def _rows_and_width(x, kw) -> tuple[int, int]:
    if kw is None:
        return x.reshape(-1, x.shape[-1]).shape[0], x.shape[-1]
    from pluginedit.ops.gram import _conv_rows
    return _conv_rows(x, kw["kernel_size"], kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1))


def gpu_suite(rows: list[dict], dtypes=(torch.bfloat16, torch.float32)) -> None:
    """Triton vs the PyTorch reference on CUDA (and unfold + matmul for K3)."""
    from pluginedit.ops.reference import _patches
    from pluginedit.triton_kernels import class_moments as k2
    from pluginedit.triton_kernels import gram as k3
    peaks = _peaks(torch.cuda.get_device_name())
    for dtype in dtypes:
        dname = str(dtype).split(".")[-1]
        for shape in K2_GPU_SHAPES:
            x = torch.randn(shape, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
            lab = torch.randint(0, 1000, (shape[0],), device="cuda")
            nbytes = x.numel() * x.element_size()
            provs = {"triton": lambda: k2.class_moments(x, lab, 1000, 0.05),
                     "triton-atomic": lambda: k2.class_moments(x, lab, 1000, 0.05, deterministic=False),
                     "torch": lambda: kernels.reference.class_moments(x, lab, 1000, 0.05)}
            if torch.ops.pluginedit is not None and "csrc" in kernels.available("class_moments"):
                provs["cuda-csrc"] = lambda: torch.ops.pluginedit.class_moments(x, lab, 1000, 0.05, None)
            times = {}
            for p, fn in provs.items():
                try:
                    times[p] = _time_cuda(fn)
                except Exception as e:  # e.g. the CUDA csrc op not compiled in
                    print(f"  skipped {p}: {e}")
            for p, t in times.items():
                bw = nbytes / t
                rows.append(dict(op="K2 class_moments", case="x".join(map(str, shape)) + f" {dname} NHWC",
                                 backend=p, ms=t * 1e3, gbps=bw / 1e9,
                                 pct_peak=100 * bw / peaks["hbm"] if peaks else None,
                                 speedup=times["torch"] / t))
        for case, shape, kw in K3_GPU_CASES:
            x = torch.randn(shape, device="cuda", dtype=dtype)
            m, d = _rows_and_width(x, kw)
            flops = 2 * m * d * d  # as the full matmul P^T P would do; the kernel does ~half

            def unfold_matmul():
                rows_ = x.reshape(-1, x.shape[-1]) if kw is None else _patches(
                    x, kw["kernel_size"], 1, kw.get("padding", 0), 1)
                return rows_.T @ rows_, rows_.sum(0)

            provs = {"unfold+matmul": unfold_matmul,
                     "torch": lambda: kernels.reference.gram(x, **(kw or {}))}
            precs = ["tf32x3", "tf32", "ieee"] if dtype == torch.float32 else ["tf32x3"]
            for prec in precs:
                provs[f"triton-{prec}" if dtype == torch.float32 else "triton"] = (
                    lambda prec=prec: k3.gram(x, **(kw or {}), precision=prec))
            times = {p: _time_cuda(fn) for p, fn in provs.items()}
            peak_kind = "tf32" if dtype == torch.float32 else dname
            for p, t in times.items():
                rows.append(dict(op="K3 gram", case=f"{case} {dname}", backend=p, ms=t * 1e3,
                                 tflops=flops / t / 1e12,
                                 pct_peak=100 * flops / t / peaks[peak_kind] if peaks else None,
                                 speedup=times["unfold+matmul"] / t))


def end_to_end(device: str, images: int, size: int, batch: int, classes: int, gram: bool,
               half: bool) -> dict:
    """Seconds to collect every layer's statistics through the library path (``capture.collect``
    with ``ClassMoments`` on every conv/linear output, and with ``gram`` a ``Gram`` on every
    groups=1 conv/linear input) over ``images`` random images, divided by plain inference
    seconds on the same images."""
    from pluginedit.capture import Request, collect
    from pluginedit.contrib.zoo import ResNet50
    from pluginedit.stats import ClassMoments, Gram
    model = ResNet50(3, 1000).to(device).eval()
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(0)
    nb = max(1, images // batch)
    x = torch.randn(nb * batch, 3, size, size, device=device, generator=gen)
    if device == "cuda":
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (nb * batch,), device=device, generator=gen)
    layers = {p: m for p, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}

    def requests():
        reqs = [Request(p, ClassMoments(m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features,
                                        classes), "output") for p, m in layers.items()]
        if gram:
            reqs += [Request(p, Gram.for_module(m), "input") for p, m in layers.items()
                     if isinstance(m, torch.nn.Linear) or m.groups == 1]
        return reqs

    def timed(fn) -> float:
        ctx = torch.autocast(device, dtype=torch.bfloat16) if half else torch.autocast(device, enabled=False)
        with torch.inference_mode(), ctx:
            fn(2)                      # warm-up: cudnn, the allocator, Triton compilation
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn(None)
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

    def infer(n):
        for part in (x[:n],) if n else x.split(batch):
            model(part)

    t_inf = timed(infer)
    t_stats = timed(lambda n: collect(model, (x[:n], y[:n]) if n else (x, y), requests(), classes,
                                      batch_size=batch))
    backend = kernels.resolve("class_moments", x[:1])[0]
    return dict(images=nb * batch, size=size, batch=batch, classes=classes, gram=gram,
                autocast_bf16=half, layers=len(layers), backend=backend, inference_s=t_inf,
                stats_s=t_stats, ratio=t_stats / t_inf, path="capture.collect + stats classes")


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = f"{'op':17} {'case':32} {'backend':14} {'ms':>9} {'GB/s':>8} {'TFLOP/s':>8} {'%peak':>6} {'speedup':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['op']:17} {r['case']:32} {r['backend']:14} {r['ms']:9.3f} {_fmt(r.get('gbps'), '8.1f'):>8} "
              f"{_fmt(r.get('tflops'), '8.3f'):>8} {_fmt(r.get('pct_peak'), '6.1f'):>6} "
              f"{_fmt(r.get('speedup'), '7.2f') + 'x':>8}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="pluginedit bench kernels", description=__doc__.split("\n")[0])
    ap.add_argument("suite", nargs="?", default="kernels", choices=["kernels"],
                    help="what to benchmark (only 'kernels' so far)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--images", type=int, default=None, help="end-to-end images (cuda 2000, cpu 16)")
    ap.add_argument("--size", type=int, default=None, help="end-to-end image size (cuda 224, cpu 224)")
    ap.add_argument("--batch", type=int, default=None, help="end-to-end batch (cuda 250, cpu 8)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--gram", action="store_true", help="also time K3 Gram of every layer's input end to end")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end figure")
    ap.add_argument("--out", default=None, help=_results.out_help("bench_kernels", "folder for <device>.json"))
    args = ap.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    name = device_name(device)
    threads = torch.get_num_threads()
    print(f"device: {name} ({device}, {threads} CPU threads); torch {torch.__version__}; "
          f"backends for class_moments: {kernels.available('class_moments')}")
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
        for r in (e2e if isinstance(e2e, list) else [e2e]):
            print(f"end-to-end ResNet-50, {r['images']} images at {r['size']} px (batch {r['batch']}, "
                  f"{r['layers']} layers, K2{' + K3' if r['gram'] else ''} via {r['backend']}): "
                  f"statistics {r['stats_s']:.2f} s / inference {r['inference_s']:.2f} s = "
                  f"{r['ratio']:.2f} (goal <= 1.25)")
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result = dict(device=name, device_type=device, cpu_threads=threads, torch=torch.__version__,
                  triton=triton_version, cuda=torch.version.cuda, date=time.strftime("%Y-%m-%dT%H:%M:%S"),
                  kernels=rows, end_to_end=e2e)
    out = _results.out_dir(args.out, "bench_kernels")
    path = out / (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") + ".json")
    _results.write_json(path, result, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
