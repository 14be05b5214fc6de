"""GPU kernel benchmarks with ``triton.testing.do_bench`` (median of repeated runs):

* K2 class moments at ResNet-50 activation shapes (batch 256, channels_last, bf16 and fp32):
  GB/s and % of the device's HBM bandwidth, Triton (deterministic and atomic) vs the PyTorch
  reference (and the CUDA csrc op when compiled).
* K3 Gram (conv 3x3 / 1x1 implicit im2col, linear): TFLOP/s (counted as the full 2*M*D^2 matmul)
  and % of peak (tf32 peak for fp32 inputs, bf16/fp16 peak for those), Triton at each precision
  vs the PyTorch reference and unfold + torch.matmul.
* The end-to-end ResNet-50 statistics/inference ratio (``--images`` at 224 px; K2, then K2 + K3).

    python benchmarks/bench_kernels_gpu.py [--out DIR] [--images 2000] [--no-e2e]

Each kernel row is printed and appended to ``<out>/<device>.rows.jsonl`` as soon as it is
measured, and a failing case is recorded and skipped, so a run cut short keeps what it measured;
``<out>/<device>.json`` (stamped, with the end-to-end figures) is written at the end. ``--out``
defaults to the scratch folder (bench-out/bench_kernels_gpu/); ``--out benchmarks/results``
updates the committed results.
"""

from __future__ import annotations

import argparse
import re
import sys

import _results  # the helper beside this script
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help=_results.out_help("bench_kernels_gpu"))
    ap.add_argument("--images", type=int, default=2000, help="end-to-end images (224 px)")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--no-e2e", action="store_true", help="kernels only")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_kernels_gpu.py needs a CUDA device (CPU: benchmarks/bench_kernels.py)")
    from pluginedit import ops
    from pluginedit.cli.bench import end_to_end
    from pluginedit.ops.bench import RowLog, device_name, gpu_suite, print_table

    name = device_name("cuda")
    out = _results.out_dir(args.out, "bench_kernels_gpu")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    print(f"device: {name}; torch {torch.__version__}; cuda {torch.version.cuda}")
    print(ops._csrc.summary(), flush=True)
    rows = RowLog(out / f"{stem}.rows.jsonl")
    gpu_suite(rows)
    print_table(rows)
    e2e = []
    if not args.no_e2e:
        batch = min(args.batch, args.images)
        for gram in (False, True):
            try:
                r = end_to_end("cuda", args.images, 224, batch, 100, gram, half=True)
            except Exception as e:  # recorded: the kernel rows above still stand
                r = dict(gram=gram, error=f"{type(e).__name__}: {e}")
            print(f"end-to-end ResNet-50 (gram={gram}): {r}", flush=True)
            e2e.append(r)
    result = dict(device=name, backends=ops._csrc.summary(), kernels=list(rows), end_to_end=e2e)
    path = _results.write_json(out / f"{stem}.json", result, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
