"""Timing tables of the statistics ops over their backends, for ``pluginedit bench kernels``
(``pluginedit.cli.bench``) and the scripts in benchmarks/.

* CPU: the PyTorch reference vs the compiled csrc ops (same run, speed-up reported).
* GPU (when CUDA is available): ``triton.testing.do_bench`` timings of the Triton kernels with
  GB/s and % of the device's memory bandwidth (K2), TFLOP/s and % of peak (K3), against the
  PyTorch reference and, for K3, unfold + torch.matmul."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from . import reference
from .dispatch import available, call
from .gram import _conv_rows

# Nominal peaks (dense, no sparsity) by device-name substring: bytes/s and FLOP/s per input kind.
# H100: the SXM part; all from vendor sheets. Unknown devices report no %.
PEAKS = {
    "H100": {"hbm": 3.35e12, "tf32": 494e12, "bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H200": {"hbm": 4.8e12, "tf32": 494e12, "bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"hbm": 2.0e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
}

# ResNet-50 activation shapes (batch 256 on GPU): the outputs of the four stages.
K2_GPU_SHAPES = [(256, 256, 56, 56), (256, 512, 28, 28), (256, 1024, 14, 14), (256, 2048, 7, 7)]
K3_GPU_CASES = [
    ("conv3x3 64x64x56x56", (64, 64, 56, 56), dict(kernel_size=3, padding=1)),
    ("conv3x3 64x256x14x14", (64, 256, 14, 14), dict(kernel_size=3, padding=1)),
    ("conv1x1 64x1024x14x14", (64, 1024, 14, 14), dict(kernel_size=1)),
    ("linear 65536x1024", (65536, 1024), None),
]
K2_CPU_SHAPES = [(32, 64, 56, 56), (64, 256, 14, 14)]
K3_CPU_CASES = [
    ("conv3x3 8x64x14x14", (8, 64, 14, 14), dict(kernel_size=3, padding=1)),
    ("linear 4096x512", (4096, 512), None),
]


# torch dtype name -> the key of its matmul peak in PEAKS
PEAK_KIND = {"float32": "tf32", "bfloat16": "bf16", "float16": "fp16"}


class RowLog(list):
    """The rows of a benchmark table, each also printed and appended to a JSON-lines file as it
    is measured: a run cut short (a time limit on a lent GPU) keeps every row it finished."""

    def __init__(self, path: Path | None = None):
        super().__init__()
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def append(self, row: dict) -> None:
        super().append(row)
        print("  " + json.dumps(row), flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def _pct(value: float, peaks: dict, kind: str) -> float | None:
    return 100 * value / peaks[kind] if kind in peaks else None


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


def peaks_of(name: str) -> dict:
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


def cuda_seconds(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3


def cpu_suite(rows: list[dict]) -> None:
    backends = [b for b in ("torch", "csrc") if b in available("class_moments")]
    g = torch.Generator().manual_seed(0)
    for shape in K2_CPU_SHAPES:
        x = torch.randn(shape, generator=g)
        lab = torch.randint(0, 10, (shape[0],), generator=g)
        times = {
            b: best_seconds(lambda b=b: call("class_moments", x, lab, 10, 0.05, backend=b))
            for b in backends
        }
        for b, t in times.items():
            rows.append(
                dict(
                    op="K2 class_moments",
                    case="x".join(map(str, shape)) + " fp32",
                    backend=b,
                    ms=t * 1e3,
                    gbps=x.numel() * 4 / t / 1e9,
                    speedup=times["torch"] / t,
                )
            )
    for case, shape, kw in K3_CPU_CASES:
        x = torch.randn(shape, generator=g)
        times = {
            b: best_seconds(lambda b=b: call("gram", x, **(kw or {}), backend=b)) for b in backends
        }
        m, d = rows_and_width(x, kw)
        for b, t in times.items():
            rows.append(
                dict(
                    op="K3 gram",
                    case=case + " fp32",
                    backend=b,
                    ms=t * 1e3,
                    tflops=2 * m * d * d / t / 1e12,
                    speedup=times["torch"] / t,
                )
            )


def rows_and_width(x, kw) -> tuple[int, int]:
    if kw is None:
        return x.reshape(-1, x.shape[-1]).shape[0], x.shape[-1]
    return _conv_rows(
        x, kw["kernel_size"], kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1)
    )


def gpu_suite(rows: list[dict], dtypes=(torch.bfloat16, torch.float32)) -> None:
    """Triton vs the PyTorch reference on CUDA (and unfold + matmul for K3)."""
    peaks = peaks_of(torch.cuda.get_device_name())
    cases = [(_gpu_class_moments, (shape,)) for shape in K2_GPU_SHAPES]
    cases += [(_gpu_gram, (case, shape, kw)) for case, shape, kw in K3_GPU_CASES]
    for dtype in dtypes:
        for fn, args in cases:
            try:  # one failing case is reported and the others still run
                fn(rows, *args, dtype, peaks)
            except Exception as e:
                print(f"  FAILED {fn.__name__}{args} {dtype}: {type(e).__name__}: {e}", flush=True)
                rows.append(dict(op=fn.__name__, case=str(args), dtype=str(dtype), error=str(e)))
            torch.cuda.empty_cache()


def _gpu_class_moments(rows: list[dict], shape, dtype, peaks: dict) -> None:
    """K2 on one channels_last activation shape: GB/s and % of the memory bandwidth."""
    from ..triton_kernels import class_moments as triton_class_moments

    dname = str(dtype).split(".")[-1]
    x = torch.randn(shape, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
    lab = torch.randint(0, 1000, (shape[0],), device="cuda")
    nbytes = x.numel() * x.element_size()
    provs = {
        "triton": lambda: triton_class_moments.class_moments(x, lab, 1000, 0.05),
        "triton-atomic": lambda: triton_class_moments.class_moments(
            x, lab, 1000, 0.05, deterministic=False
        ),
        "torch": lambda: reference.class_moments(x, lab, 1000, 0.05),
    }
    if "csrc" in available("class_moments", "cuda"):
        provs["cuda-csrc"] = lambda: torch.ops.pluginedit.class_moments(x, lab, 1000, 0.05, None)
    times = {}
    for p, fn in provs.items():
        try:
            times[p] = cuda_seconds(fn)
        except Exception as e:  # e.g. the CUDA csrc op not compiled in
            print(f"  skipped {p}: {e}")
    for p, t in times.items():
        bw = nbytes / t
        rows.append(
            dict(
                op="K2 class_moments",
                case="x".join(map(str, shape)) + f" {dname} NHWC",
                backend=p,
                ms=t * 1e3,
                gbps=bw / 1e9,
                pct_peak=_pct(bw, peaks, "hbm"),
                speedup=times["torch"] / t,
            )
        )


def _gpu_gram(rows: list[dict], case: str, shape, kw, dtype, peaks: dict) -> None:
    """K3 on one linear or conv input: TFLOP/s and % of the matmul peak, speed-up over unfold
    + matmul; fp32 inputs at each Triton precision."""
    from ..triton_kernels import gram as triton_gram

    dname = str(dtype).split(".")[-1]
    x = torch.randn(shape, device="cuda", dtype=dtype)
    m, d = rows_and_width(x, kw)
    flops = 2 * m * d * d  # as the full matmul P^T P would do; the kernel does ~half

    def unfold_matmul():
        rows_ = (
            x.reshape(-1, x.shape[-1])
            if kw is None
            else reference._patches(x, kw["kernel_size"], 1, kw.get("padding", 0), 1)
        )
        return rows_.T @ rows_, rows_.sum(0)

    provs = {
        "unfold+matmul": unfold_matmul,
        "torch": lambda: reference.gram(x, **(kw or {})),
    }
    precs = ["tf32x3", "tf32", "ieee"] if dtype == torch.float32 else ["tf32x3"]
    for prec in precs:
        name = f"triton-{prec}" if dtype == torch.float32 else "triton"
        provs[name] = lambda prec=prec: triton_gram.gram(x, **(kw or {}), precision=prec)
    times = {p: cuda_seconds(fn) for p, fn in provs.items()}
    peak_kind = PEAK_KIND.get(dname, dname)
    for p, t in times.items():
        rows.append(
            dict(
                op="K3 gram",
                case=f"{case} {dname}",
                backend=p,
                ms=t * 1e3,
                tflops=flops / t / 1e12,
                pct_peak=_pct(flops / t, peaks, peak_kind),
                speedup=times["unfold+matmul"] / t,
            )
        )


def _format(v, spec):
    return "" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'op':17} {'case':32} {'backend':14} {'ms':>9} {'GB/s':>8} {'TFLOP/s':>8} "
        f"{'%peak':>6} {'speedup':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['op']:17} {r['case']:32} FAILED: {r['error'][:60]}")
            continue
        print(
            f"{r['op']:17} {r['case']:32} {r['backend']:14} {r['ms']:9.3f} "
            f"{_format(r.get('gbps'), '8.1f'):>8} "
            f"{_format(r.get('tflops'), '8.3f'):>8} {_format(r.get('pct_peak'), '6.1f'):>6} "
            f"{_format(r.get('speedup'), '7.2f') + 'x':>8}"
        )
