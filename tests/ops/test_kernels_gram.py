"""K3 Gram: every backend against the float64 reference on awkward linear and conv shapes.

Every backend returns float64 (G, s) (the op contract; compiled kernels multiply in fp32); the
tolerance rule (tests/ops/_kernel_tol.py) compares them with the
float64 truth using plain PyTorch in the input dtype (unfold + matmul) as the yardstick."""

import pytest
import torch

from pluginedit import ops
from tests.ops._kernel_tol import check

try:
    from pluginedit.triton_kernels import gram as k3
    from pluginedit.triton_kernels import interpreting
except ImportError:
    k3 = None

# Triton on CPU tensors needs the interpreter (conftest sets it only where there is no GPU).
NO_TRITON_CPU = pytest.mark.skipif(
    k3 is None or not interpreting(),
    reason="triton absent, or compiled (GPU present): CPU tensors need TRITON_INTERPRET",
)

# (name, shape, layout, conv kwargs or None for linear)
CASES = [
    ("linear", (37, 23), "c", None),
    ("linear_3d", (2, 5, 19), "c", None),
    ("linear_one_row", (1, 7), "c", None),
    ("linear_noncontig", (23, 40), "t", None),
    ("conv3x3_7x7", (2, 3, 7, 7), "c", dict(kernel_size=3, padding=1)),
    ("conv_n1_cprime", (1, 7, 7, 7), "c", dict(kernel_size=3, stride=2, padding=1)),
    (
        "conv_rect_dil",
        (2, 5, 9, 8),
        "c",
        dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=2),
    ),
    ("conv1x1_channels_last", (3, 11, 7, 7), "cl", dict(kernel_size=1)),
    ("conv_noncontig", (2, 3, 7, 7), "t", dict(kernel_size=3, padding=1)),
    ("conv_wide", (2, 19, 5, 5), "c", dict(kernel_size=3, padding=1)),  # D = 171 > one tile
    ("conv_empty_batch", (0, 3, 7, 7), "c", dict(kernel_size=3, padding=1)),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _input(shape, layout, dtype, device="cpu"):
    """Values from a CPU generator (the same on every device), laid out on ``device``."""
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) + 0.3).to(dtype).to(device)
    if layout == "cl":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "t":
        x = x.transpose(-1, -2)
    return x


def _same_dtype(x, kw):
    """Plain PyTorch in x's dtype: unfold (conv) + matmul, no upcast."""
    if kw is None:
        rows = x.reshape(-1, x.shape[-1])
    else:
        if x.shape[0] == 0:
            return ops.reference.gram(x, **kw)[:2]
        rows = ops.reference._patches(
            x, kw["kernel_size"], kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1)
        )
    return rows.T @ rows, rows.sum(0)


def _backends():
    out = [pytest.param("torch", {}, id="torch")]
    out.append(
        pytest.param(
            "csrc",
            {},
            id="csrc",
            marks=pytest.mark.skipif(
                "csrc" not in ops.available("gram"), reason="csrc extension not built"
            ),
        )
    )
    out.append(pytest.param("triton", {}, id="triton", marks=NO_TRITON_CPU))
    return out


def _assert_matches_reference(got, x, kw, tag, mirrored=False):
    truth = ops.reference.gram(x, **(kw or {}))
    same = _same_dtype(x, kw)
    assert got[2] == truth[2], f"{tag}: row count {got[2]} != {truth[2]}"
    check(f"{tag} G", got[0], truth[0], same[0])
    check(f"{tag} s", got[1], truth[1], same[1])
    if mirrored:  # the Triton kernel computes the upper triangle and mirrors it: exactly symmetric
        assert torch.equal(got[0], got[0].T), f"{tag}: G not symmetric"


@pytest.mark.parametrize("backend,opts", _backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name,shape,layout,kw", CASES, ids=[c[0] for c in CASES])
def test_gram_matches_reference(backend, opts, dtype, name, shape, layout, kw):
    x = _input(shape, layout, dtype)
    got = ops.call("gram", x, **(kw or {}), backend=backend, **opts)
    _assert_matches_reference(got, x, kw, f"{backend}/{name}/{dtype}", mirrored=backend == "triton")


@NO_TRITON_CPU
@pytest.mark.parametrize("splits,block_d", [(1, 16), (3, 16), (2, 32)])
def test_triton_gram_split_m_and_tiles(splits, block_d):
    # Several M splits (atomic split-K) and several upper-triangle tiles, mirrored.
    x = _input((2, 5, 7, 7), "c", torch.float32)
    kw = dict(kernel_size=3, padding=1)
    got = k3.gram(x, **kw, splits=splits, block_m=16, block_d=block_d)
    _assert_matches_reference(got, x, kw, f"splits={splits}", mirrored=True)


@NO_TRITON_CPU
def test_triton_gram_batches_add_up_in_float64():
    # Fresh float64 (G, s) per call (the op contract): batches add up to the whole.
    x = _input((4, 3, 7, 7), "c", torch.float32)
    kw = dict(kernel_size=3, padding=1)
    parts = [k3.gram(part, **kw) for part in x.split(2)]
    assert all(p[0].dtype == p[1].dtype == torch.float64 for p in parts)
    truth = ops.reference.gram(x, **kw)
    torch.testing.assert_close(parts[0][0] + parts[1][0], truth[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(parts[0][1] + parts[1][1], truth[1], rtol=1e-5, atol=1e-4)
    assert parts[0][2] + parts[1][2] == truth[2]


@NO_TRITON_CPU
def test_triton_gram_rejects_unknown_precision():
    with pytest.raises(ValueError, match="precision"):
        k3.gram(torch.randn(4, 4), precision="fp8")


@pytest.mark.skipif("csrc" not in ops.available("gram"), reason="csrc extension not built")
def test_csrc_gram_fake_impl_and_compile():
    x = _input((2, 3, 7, 7), "c", torch.float32)
    args = (x, [3, 3], [1, 1], [1, 1], [1, 1])
    torch.library.opcheck(torch.ops.pluginedit.gram.default, args)
    torch.library.opcheck(torch.ops.pluginedit.gram.default, (torch.randn(5, 4), [], [], [], []))
    f = torch.compile(
        lambda a: torch.ops.pluginedit.gram(a, [3, 3], [1, 1], [1, 1], [1, 1]), fullgraph=True
    )
    torch.testing.assert_close(f(x)[0], torch.ops.pluginedit.gram(*args)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name,shape,layout,kw", CASES, ids=[c[0] for c in CASES])
def test_triton_gram_cuda(name, shape, layout, kw, dtype, precision):
    x = _input(shape, layout, dtype, device="cuda")
    got = ops.call("gram", x, **(kw or {}), precision=precision)  # auto = triton on CUDA
    assert got[0].is_cuda
    _assert_matches_reference(
        [t.cpu() if torch.is_tensor(t) else t for t in got],
        x.cpu(),
        kw,
        f"cuda/{name}/{dtype}/{precision}",
        mirrored=True,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("splits,block_d", [(1, 16), (3, 16), (2, 32), (None, None)])
def test_triton_gram_cuda_split_m_and_tiles(splits, block_d):
    # Atomic split-K over several programs and several tiles, compiled, on a sliced
    # channels_last input (strides neither NCHW nor NHWC).
    x = _input((3, 10, 9, 9), "cl", torch.float32, device="cuda")[:, ::2]
    kw = dict(kernel_size=3, padding=1)
    got = k3.gram(x, **kw, splits=splits, block_d=block_d)
    _assert_matches_reference([got[0].cpu(), got[1].cpu(), got[2]], x.cpu(), kw, "cuda-splits")
