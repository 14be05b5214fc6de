#!/usr/bin/env bash
# One prepared run on a fresh GPU machine (at most 580 s of step limits), results under $OUT:
#   1. the device and versions (nvidia-smi, torch, triton, nvcc);
#   2. the CUDA extension built with PLUGINEDIT_BUILD_EXT=cuda (a failed build is recorded and
#      the rest still runs on Triton), then `python -m pluginedit.ops` (the backend table);
#   3. the gpu-marked kernel tests (compiled Triton and CUDA against the float64 reference);
#   4. benchmarks/bench_kernels_gpu.py: the kernel table (rows written as measured) and the
#      end-to-end ResNet-50 statistics / inference ratio on the GPU (K2, then K2 + K3).
# Every step has its own time limit, so one hang cannot eat the budget of the others.
#   OUT=/some/folder bash benchmarks/gpu_check.sh        (default OUT: bench-out/gpu_check)
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out/gpu_check}"
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS CMD...: runs CMD with a limit, logs to $OUT/NAME.log, notes rc
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
  tail -n 5 "$OUT/$name.log"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  python -c "import triton; print('triton', triton.__version__)"
  nvcc --version | tail -n 1
} >"$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
step build 200 env PLUGINEDIT_BUILD_EXT=cuda pip install --no-build-isolation --no-deps -v -e .
step backends 30 python -m pluginedit.ops
step tests 150 python -m pytest -q -m gpu -p no:randomly tests/ops tests/stats \
  --junitxml="$OUT/tests.xml"
step bench 200 python benchmarks/bench_kernels_gpu.py --out "$OUT/bench" --images 1000
cat "$OUT/summary.txt"
