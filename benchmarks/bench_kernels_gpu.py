"""GPU kernel benchmarks with ``triton.testing.do_bench`` (median of repeated runs):

* K2 class moments at ResNet-50 activation shapes (batch 256, channels_last, bf16 and fp32):
  GB/s and % of the device's HBM bandwidth, Triton (deterministic and atomic) vs the PyTorch
  reference (and the CUDA csrc op when compiled).
* K3 Gram (conv 3x3 / 1x1 implicit im2col, linear): TFLOP/s (counted as the full 2*M*D^2 matmul)
  and % of peak (tf32 peak for fp32 inputs, bf16 peak for bf16), Triton at each precision vs the
  PyTorch reference and unfold + torch.matmul.
* The end-to-end ResNet-50 statistics/inference ratio on 2,000 images at 224 px.

    python benchmarks/bench_kernels_gpu.py            # same as `pluginedit bench kernels` on CUDA

Writes <device>.json to a scratch folder (bench-out/bench_kernels/, or $PLUGINEDIT_BENCH_OUT/bench_kernels/);
``--out benchmarks/results`` updates the committed results. Written without a GPU available; not yet run.
"""

import sys

import bench_kernels as bench  # the script beside this one
import torch

if __name__ == "__main__":
    if not {"-h", "--help"} & set(sys.argv[1:]) and not torch.cuda.is_available():
        sys.exit(
            "bench_kernels_gpu.py needs a CUDA device (the CPU suite is benchmarks/test_bench_kernels_cpu.py)"
        )
    sys.exit(bench.main(["--device", "cuda", *sys.argv[1:]]))
