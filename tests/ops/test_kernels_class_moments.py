"""K2 class moments: every backend against the float64 reference on awkward shapes and dtypes.

Without a GPU, Triton runs on the CPU through the interpreter (TRITON_INTERPRET=1 from conftest), so
shapes stay small; with one, the gpu-marked tests run the compiled Triton and CUDA kernels on the
same shapes (and the CPU-tensor Triton tests are skipped)."""

import math

import pytest
import torch

from pluginedit import ops
from tests.ops._kernel_tol import check

try:
    from pluginedit.triton_kernels import class_moments as k2
    from pluginedit.triton_kernels import interpreting
except ImportError:  # triton absent
    k2 = None
from pluginedit.ops import _csrc

# Triton on CPU tensors needs the interpreter (conftest sets it only where there is no GPU).
TRITON_CPU = k2 is not None and interpreting()
NO_TRITON_CPU = pytest.mark.skipif(
    not TRITON_CPU,
    reason="triton absent, or compiled (GPU present): CPU tensors need TRITON_INTERPRET",
)

CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# (name, shape, layout, num_classes, labels or None = random)
SHAPES = [
    ("n1", (1, 7, 7, 7), "nchw", 3, None),
    ("c_prime_hw49", (6, 13, 7, 7), "nchw", 4, None),
    ("channels_last", (5, 11, 7, 7), "channels_last", 3, None),
    ("non_contiguous", (4, 9, 7, 7), "transposed", 3, None),
    ("features_2d", (9, 5), "nchw", 2, None),
    ("sliced_channels", (3, 14, 5, 5), "sliced", 2, None),
    ("empty_classes", (5, 3, 7, 7), "nchw", 6, [0, 2, 2, 0, 5]),
    ("k1", (4, 3, 7, 7), "nchw", 1, None),
    ("n0", (0, 3, 7, 7), "nchw", 2, []),
    ("long_map", (2, 3, 40, 41), "nchw", 2, None),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _input(shape, layout, dtype, seed=0, device="cpu"):
    """Values from a CPU generator (the same on every device), laid out on ``device``."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) + 0.5).to(dtype).to(device)  # a mean offset: s is not ~0
    if layout == "sliced":  # channels_last sliced along channels: strides of neither layout
        return x.to(memory_format=torch.channels_last)[:, ::2]
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    if layout == "transposed":
        x = x.transpose(2, 3)  # neither NCHW- nor channels_last-contiguous
    return x


def _labels(n, k, labels, seed=1):
    if labels is not None:
        return torch.tensor(labels, dtype=torch.int64)
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def _backends():
    out = [pytest.param("torch", {}, id="torch")]
    out.append(
        pytest.param(
            "csrc",
            {},
            id="csrc",
            marks=pytest.mark.skipif(
                "csrc" not in ops.available("class_moments"), reason="csrc extension not built"
            ),
        )
    )
    no_triton = NO_TRITON_CPU
    out.append(pytest.param("triton", {}, id="triton", marks=no_triton))
    out.append(
        pytest.param("triton", {"deterministic": False}, id="triton-atomic", marks=no_triton)
    )
    return out


def _assert_matches_reference(got, x, labels, k, gamma, shift, tag):
    truth = ops.reference.class_moments(x, labels, k, gamma, shift)
    same = _same_dtype_ref(x, labels, k, gamma, shift)
    assert got[0].dtype == torch.float64 and got[1].dtype == torch.float64
    check(f"{tag} counts", got[0], truth[0], same[0], atol=0)
    for p, feat in enumerate(ops.reference.WITNESS_FEATURES):
        check(f"{tag} {feat}", got[1][..., p], truth[1][..., p], same[1][..., p])


def _same_dtype_ref(x, labels, k, gamma, shift):
    """The reference with its spatial reductions in x's own dtype: what plain PyTorch in that
    dtype would give, the scale of the tolerances."""
    v = x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))
    s = v.sum(2).double() - (shift.double() if shift is not None else 0)
    e = torch.exp(-gamma * v.square().sum(2).sqrt()).double()
    f = torch.stack([s, s**2, s**3, s**4, e, e**2], 2)
    return (
        torch.bincount(labels, minlength=k).double(),
        torch.zeros(k, x.shape[1], 6, dtype=torch.float64).index_add_(0, labels, f),
    )


@pytest.mark.parametrize("backend,opts", _backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name,shape,layout,k,labels", SHAPES, ids=[s[0] for s in SHAPES])
def test_class_moments_matches_reference(backend, opts, dtype, name, shape, layout, k, labels):
    x = _input(shape, layout, dtype)
    lab = _labels(x.shape[0], k, labels)
    gamma = 0.05
    got = ops.call("class_moments", x, lab, k, gamma, backend=backend, **opts)
    _assert_matches_reference(got, x, lab, k, gamma, None, f"{backend}{opts}/{name}/{dtype}")
    if labels is not None and len(labels):  # absent classes are exact zero rows
        absent = [c for c in range(k) if c not in labels]
        assert (got[0][absent] == 0).all() and (got[1][absent] == 0).all()


@pytest.mark.parametrize("backend,opts", _backends())
def test_class_moments_shift(backend, opts):
    x = _input((5, 7, 6, 6), "nchw", torch.float32) * 3 + 10
    lab = _labels(5, 3, None)
    shift = x.double().sum((2, 3)).mean(0)  # centres s: fourth powers stay well conditioned
    got = ops.call("class_moments", x, lab, 3, 0.5, shift, backend=backend, **opts)
    _assert_matches_reference(got, x, lab, 3, 0.5, shift, f"{backend}{opts}/shift")


@NO_TRITON_CPU
def test_triton_batches_add_up_and_are_deterministic():
    # Fresh float64 sums per call (the op contract): two halves add up to the whole batch, and
    # the deterministic path repeats bit for bit.
    x = _input((6, 5, 7, 7), "nchw", torch.float32)
    lab = _labels(6, 3, None)
    halves = [k2.class_moments(x[h], lab[h], 3, 0.1) for h in (slice(0, 3), slice(3, 6))]
    whole = k2.class_moments(x, lab, 3, 0.1)
    torch.testing.assert_close(halves[0][1] + halves[1][1], whole[1], rtol=1e-12, atol=0)
    assert torch.equal(halves[0][0] + halves[1][0], whole[0])
    assert torch.equal(whole[1], k2.class_moments(x, lab, 3, 0.1)[1])


@pytest.mark.skipif("csrc" not in ops.available("class_moments"), reason="csrc extension not built")
def test_csrc_deterministic_across_thread_counts():
    x = _input((16, 33, 7, 7), "nchw", torch.float32)
    lab = _labels(16, 4, None)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = ops.call("class_moments", x, lab, 4, backend="csrc")
        torch.set_num_threads(2)
        b = ops.call("class_moments", x, lab, 4, backend="csrc")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a[1], b[1])


@pytest.mark.skipif("csrc" not in ops.available("class_moments"), reason="csrc extension not built")
def test_csrc_op_fake_impl_and_compile():
    x = _input((3, 5, 7, 7), "nchw", torch.float32)
    lab = _labels(3, 2, None)
    torch.library.opcheck(torch.ops.pluginedit.class_moments.default, (x, lab, 2, 1.0, None))
    f = torch.compile(
        lambda a, b: torch.ops.pluginedit.class_moments(a, b, 2, 1.0, None), fullgraph=True
    )
    torch.testing.assert_close(
        f(x, lab)[1], ops.call("class_moments", x, lab, 2, backend="csrc")[1]
    )


@pytest.mark.skipif("csrc" not in ops.available("class_moments"), reason="csrc extension not built")
def test_csrc_rejects_bad_labels():
    with pytest.raises(RuntimeError, match="label out of range"):
        ops.call("class_moments", torch.randn(2, 3, 4), torch.tensor([0, 3]), 3, backend="csrc")


CUDA_BACKENDS = [
    pytest.param("triton", {"deterministic": True}, id="triton"),
    pytest.param("triton", {"deterministic": False}, id="triton-atomic"),
    pytest.param(
        "csrc",
        {},
        id="cuda-csrc",
        marks=pytest.mark.skipif(
            not _csrc.compiled_kernel("class_moments", "CUDA"),
            reason="the CUDA csrc kernel is not built (PLUGINEDIT_BUILD_EXT=cuda)",
        ),
    ),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend,opts", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name,shape,layout,k,labels", SHAPES, ids=[s[0] for s in SHAPES])
def test_class_moments_cuda(name, shape, layout, k, labels, dtype, backend, opts):
    # The CPU tests' shapes (channels_last, sliced, transposed, N=0, ...) on the device, each
    # compiled backend against the float64 reference of the same values.
    if backend == "triton":
        pytest.importorskip("triton")
    x = _input(shape, layout, dtype, device="cuda")
    assert x.stride() == _input(shape, layout, dtype).stride()  # the layout survived the move
    lab = _labels(x.shape[0], k, labels).cuda()
    got = ops.call("class_moments", x, lab, k, 0.05, backend=backend, **opts)
    assert got[1].is_cuda
    _assert_matches_reference(
        [t.cpu() for t in got], x.cpu(), lab.cpu(), k, 0.05, None, f"cuda-{backend}/{name}/{dtype}"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend,opts", CUDA_BACKENDS)
def test_class_moments_cuda_shift(backend, opts):
    x = _input((5, 7, 6, 6), "channels_last", torch.float32, device="cuda") * 3 + 10
    lab = _labels(5, 3, None).cuda()
    shift = x.double().sum((2, 3)).mean(0)
    got = ops.call("class_moments", x, lab, 3, 0.5, shift, backend=backend, **opts)
    _assert_matches_reference(
        [t.cpu() for t in got], x.cpu(), lab.cpu(), 3, 0.5, shift.cpu(), f"cuda-{backend}/shift"
    )
