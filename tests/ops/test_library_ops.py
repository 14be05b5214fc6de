"""Every statistics op is one torch.library op (``torch.ops.pluginedit.<op>``, no second
registration) with a fake: opcheck passes through the Python kernel and the compiled csrc
kernels, every backend keeps the reference's float64 contract, and torch.compile(fullgraph=True)
traces a statistics update (op + float64 accumulation), equal to eager."""

from __future__ import annotations

import os

import pytest
import torch

from pluginedit import ops
from pluginedit.ops import _csrc

SHAPES = [(1, 3, 7, 7), (5, 7, 7, 7), (4, 2, 1, 1)]  # N=1, prime C, HW=49, 1x1 maps


def _data(shape, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    return x, torch.randint(0, k, (shape[0],), generator=g)


def _op_cases(x, y):
    ops = torch.ops.pluginedit
    return [
        (ops.channel_moments.default, (x, y, 3)),
        (ops.class_moments.default, (x, y, 3, 0.5, None)),
        (
            ops.class_moments.default,
            (x, y, 3, 1.0, torch.randn(x.shape[1], dtype=torch.float64)),
        ),
        (ops.class_maps.default, (x, y, 3, True)),
        (ops.class_maps.default, (x, y, 3, False)),
        (ops.gram.default, (x, [3, 3], [1, 1], [1, 1], [1, 1])),
        (ops.gram.default, (x.reshape(-1, x.shape[-1]), [], [], [], [])),
    ]


def _csrc_cases(x, y):
    ops = torch.ops.pluginedit
    return [
        (ops.class_moments.default, (x, y, 3, 0.5, None)),
        (ops.gram.default, (x, [3, 3], [2, 2], [1, 1], [1, 1])),
        (ops.gram.default, (x.reshape(-1, x.shape[-1]).contiguous(), [], [], [], [])),
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_opcheck_ops(shape):
    # Through whatever kernel the dispatcher picks here (csrc where built, else the reference).
    x, y = _data(shape)
    for op, args in _op_cases(x, y):
        results = torch.library.opcheck(op, args)
        assert results and set(results.values()) == {"SUCCESS"}, (op, results)


@pytest.mark.skipif(not _csrc.LOADED, reason="compiled extension not built")
@pytest.mark.parametrize("shape", SHAPES)
def test_opcheck_csrc_ops(shape):
    x, y = _data(shape)
    for op, args in _csrc_cases(x, y):
        results = torch.library.opcheck(op, args)
        assert results and set(results.values()) == {"SUCCESS"}, (op, results)


def test_each_op_is_registered_once():
    # One op per statistic: no second (``*_ref``) registration, and every op is defined with a
    # schema from Python, whether or not the extension is loaded.
    names = {"channel_moments", "class_maps", "class_maps_fold", "class_maps_gram", "class_moments"}
    names.add("gram")
    for name in names:
        assert torch._C._dispatch_has_kernel(f"pluginedit::{name}"), name
        assert not hasattr(torch.ops.pluginedit, f"{name}_ref"), name
    assert set(ops.dispatch._ops) == names


def _backends(op):
    out = list(ops.available(op))
    if "triton" in out and not os.environ.get("TRITON_INTERPRET"):
        out.remove("triton")  # compiled triton (a GPU is present) runs CUDA tensors only
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_every_backend_returns_the_float64_contract(dtype):
    # One contract across backends: fresh float64 results, equal to the reference.
    x, y = _data((3, 4, 6, 6))
    x = x.to(dtype)
    ref_c, ref_s = ops.reference.class_moments(x, y, 3, 0.5)
    ref_g, ref_p, ref_n = ops.reference.gram(x, kernel_size=3, padding=1)
    for b in _backends("class_moments"):
        c, s = ops.call("class_moments", x, y, 3, 0.5, backend=b)
        assert (c.dtype, s.dtype) == (torch.float64, torch.float64), b
        torch.testing.assert_close(s, ref_s, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c, ref_c, rtol=0, atol=0)
    for b in _backends("gram"):
        g, p, n = ops.call("gram", x, kernel_size=3, padding=1, backend=b)
        assert (g.dtype, p.dtype, n) == (torch.float64, torch.float64, ref_n), b
        torch.testing.assert_close(g, ref_g, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(p, ref_p, rtol=1e-5, atol=1e-4)


def _update(backend: str):
    """One statistics update as a graph: K2 power sums of a batch folded into float64 totals."""

    # The reference as a plain function, the compiled kernels through the op.
    op = ops.reference.class_moments if backend == "torch" else torch.ops.pluginedit.class_moments

    def update(counts, sums, x, y):
        c, s = op(x, y, 3, 0.5, None)
        return counts + c, sums + s

    return update


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        pytest.param(
            "csrc",
            marks=pytest.mark.skipif(not _csrc.LOADED, reason="compiled extension not built"),
        ),
    ],
)
def test_compiled_statistics_update_equals_eager(backend):
    torch._dynamo.reset()
    update = _update(backend)
    compiled = torch.compile(update, fullgraph=True, backend="aot_eager")
    counts, sums = torch.zeros(3, dtype=torch.float64), torch.zeros(3, 5, 6, dtype=torch.float64)
    ce, se, cc, sc = counts, sums, counts, sums
    for seed in range(3):
        x, y = _data((6, 5, 7, 7), seed=seed)
        ce, se = update(ce, se, x, y)
        cc, sc = compiled(cc, sc, x, y)
    torch.testing.assert_close(cc, ce, rtol=0, atol=0)
    torch.testing.assert_close(sc, se, rtol=1e-12, atol=1e-9)


def test_compiled_gram_update_equals_eager():
    torch._dynamo.reset()

    def update(g, x):
        return g + torch.ops.pluginedit.gram(x, [3, 3], [1, 1], [1, 1], [1, 1])[0]

    compiled = torch.compile(update, fullgraph=True, backend="aot_eager")
    x, _ = _data((3, 2, 7, 7))
    g0 = torch.zeros(18, 18, dtype=torch.float64)
    torch.testing.assert_close(compiled(g0, x), update(g0, x))


@pytest.mark.gpu
def test_compiled_triton_update_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    x, y = (t.cuda() for t in _data((8, 5, 7, 7)))
    backend, fn = ops.resolve("class_moments", x)
    assert backend == ("csrc" if _csrc.compiled_kernel("class_moments", "CUDA") else "triton")
    c, s = fn(x, y, 3, 0.5, None)
    rc, rs = ops.reference.class_moments(x, y, 3, 0.5, None)
    torch.testing.assert_close(c, rc, rtol=0, atol=0)
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=1e-6)
