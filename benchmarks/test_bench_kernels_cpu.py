"""CPU kernel benchmarks (pytest-benchmark): the PyTorch reference vs the fused C++ ops, in the
same run, with the speed-up recorded in each csrc benchmark's extra_info and printed.

    pytest benchmarks/test_bench_kernels_cpu.py --benchmark-json=benchmarks/results/cpu-pytest-benchmark.json

Acceptance (issue 5): the csrc class-moment op is >= 2x the reference at a ResNet-like shape.
Not asserted: timings on a shared machine are noisy; the ratio is reported instead.
"""

import pytest
import torch

from pluginedit import ops

K2_SHAPES = {
    "resnet_layer1_32x64x56x56": (32, 64, 56, 56),
    "resnet_layer3_64x256x14x14": (64, 256, 14, 14),
}
K3_CASES = {
    "conv3x3_8x64x14x14": ((8, 64, 14, 14), dict(kernel_size=3, padding=1)),
    "linear_4096x512": ((4096, 512), {}),
}
HAVE_CSRC = "csrc" in ops.available("class_moments")
_median: dict[tuple[str, str], float] = {}


def _run(benchmark, op, backend, case, args, kwargs):
    if backend == "csrc" and not HAVE_CSRC:
        pytest.skip("csrc extension not built")
    fn = ops.resolve(op, args[0], backend)[1]
    benchmark.group = f"{op} {case}"
    benchmark.extra_info.update(backend=backend, threads=torch.get_num_threads())
    benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=5, warmup_rounds=1, iterations=1)
    _median[(case, backend)] = benchmark.stats.stats.median
    ref = _median.get((case, "torch"))
    if backend == "csrc" and ref is not None:
        ratio = ref / benchmark.stats.stats.median
        benchmark.extra_info["speedup_vs_torch"] = round(ratio, 2)
        print(
            f"\n{op} {case}: csrc is {ratio:.2f}x the PyTorch reference "
            f"({torch.get_num_threads()} threads)"
        )


@pytest.mark.parametrize("backend", ["torch", "csrc"])  # torch first: the ratio needs it
@pytest.mark.parametrize("case", list(K2_SHAPES))
def test_class_moments(benchmark, case, backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(K2_SHAPES[case], generator=g)
    labels = torch.randint(0, 10, (x.shape[0],), generator=g)
    _run(benchmark, "class_moments", backend, case, (x, labels, 10, 0.05), {})


@pytest.mark.parametrize("backend", ["torch", "csrc"])
@pytest.mark.parametrize("case", list(K3_CASES))
def test_gram(benchmark, case, backend):
    shape, kw = K3_CASES[case]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    _run(benchmark, "gram", backend, case, (x,), kw)
