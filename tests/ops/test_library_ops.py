"""Every statistics op is a torch.library op with a fake implementation: opcheck passes for the
reference and the compiled csrc versions, and torch.compile(fullgraph=True) traces a statistics
update (op + float64 accumulation) through each, equal to eager."""

from __future__ import annotations

import pytest
import torch

from pluginedit.ops import _csrc

SHAPES = [(1, 3, 7, 7), (5, 7, 7, 7), (4, 2, 1, 1)]  # N=1, prime C, HW=49, 1x1 maps


def _data(shape, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    return x, torch.randint(0, k, (shape[0],), generator=g)


def _ref_cases(x, y):
    ops = torch.ops.pluginedit
    return [
        (ops.channel_moments_ref.default, (x, y, 3)),
        (ops.class_moments_ref.default, (x, y, 3, 0.5, None)),
        (
            ops.class_moments_ref.default,
            (x, y, 3, 1.0, torch.randn(x.shape[1], dtype=torch.float64)),
        ),
        (ops.class_maps_ref.default, (x, y, 3, True)),
        (ops.class_maps_ref.default, (x, y, 3, False)),
        (ops.gram_ref.default, (x, [3, 3], [1, 1], [1, 1], [1, 1])),
        (ops.gram_ref.default, (x.reshape(-1, x.shape[-1]), [], [], [], [])),
    ]


def _csrc_cases(x, y):
    ops = torch.ops.pluginedit
    return [
        (ops.class_moments.default, (x, y, 3, 0.5, None)),
        (ops.gram.default, (x, [3, 3], [2, 2], [1, 1], [1, 1])),
        (ops.gram.default, (x.reshape(-1, x.shape[-1]).contiguous(), [], [], [], [])),
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_opcheck_reference_ops(shape):
    x, y = _data(shape)
    for op, args in _ref_cases(x, y):
        results = torch.library.opcheck(op, args)
        assert results and set(results.values()) == {"SUCCESS"}, (op, results)


@pytest.mark.skipif(not _csrc.LOADED, reason="compiled extension not built")
@pytest.mark.parametrize("shape", SHAPES)
def test_opcheck_csrc_ops(shape):
    x, y = _data(shape)
    for op, args in _csrc_cases(x, y):
        results = torch.library.opcheck(op, args)
        assert results and set(results.values()) == {"SUCCESS"}, (op, results)


def _update(backend: str):
    """One statistics update as a graph: K2 power sums of a batch folded into float64 totals."""
    op = (
        torch.ops.pluginedit.class_moments_ref
        if backend == "torch"
        else torch.ops.pluginedit.class_moments
    )

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
        return g + torch.ops.pluginedit.gram_ref(x, [3, 3], [1, 1], [1, 1], [1, 1])[0]

    compiled = torch.compile(update, fullgraph=True, backend="aot_eager")
    x, _ = _data((3, 2, 7, 7))
    g0 = torch.zeros(18, 18, dtype=torch.float64)
    torch.testing.assert_close(compiled(g0, x), update(g0, x))


@pytest.mark.gpu
def test_compiled_triton_update_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    from pluginedit import ops

    x, y = (t.cuda() for t in _data((8, 5, 7, 7)))
    backend, fn = ops.resolve("class_moments", x)
    assert backend == "triton"
    c, s = fn(x, y, 3, 0.5, None)
    rc, rs = torch.ops.pluginedit.class_moments_ref(x, y, 3, 0.5, None)
    torch.testing.assert_close(c, rc, rtol=0, atol=0)
    torch.testing.assert_close(s, rs, rtol=1e-6, atol=1e-6)
