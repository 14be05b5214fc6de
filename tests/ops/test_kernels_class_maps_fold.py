"""S1 fold (``class_maps_fold``): the C++ kernel against the reference on awkward shapes,
layouts and dtypes, fresh (``init``) and accumulating state, per-pixel and per-channel squares.

The tolerance is principled, not tuned: every element is widened exactly to float64 and added in
float64 in the reference's order (state first, samples in batch order), so per-pixel sums and
squares must match the reference bit for bit; per-channel squares differ only in the order of a
float64 sum over space (<= L ulps relative, here bounded by 1e-13 for L <= 2000)."""

import math

import pytest
import torch

from pluginedit import ops
from pluginedit.ops.class_maps import accumulate_maps, class_maps

CSRC = pytest.mark.skipif(
    "csrc" not in ops.available("class_maps_fold"), reason="csrc extension not built"
)

# (name, shape, layout, num_classes, labels or None = random)
SHAPES = [
    ("n1", (1, 7, 7, 7), "nchw", 3, None),
    ("c_prime_hw49", (6, 13, 7, 7), "nchw", 4, None),
    ("channels_last", (5, 19, 7, 7), "channels_last", 3, None),
    ("transposed", (4, 9, 7, 6), "transposed", 3, None),
    ("features_2d", (9, 5), "nchw", 2, None),
    ("sliced_channels", (3, 14, 5, 5), "sliced", 2, None),
    ("empty_classes", (5, 3, 7, 7), "nchw", 6, [0, 2, 2, 0, 5]),
    ("n0", (0, 3, 7, 7), "nchw", 2, []),
    ("long_map_tail", (3, 3, 37, 29), "nchw", 2, None),  # L = 1073: tiles of 512 and a tail
    ("long_map_cl", (3, 20, 23, 29), "channels_last", 2, None),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _input(shape, layout, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 50).to(dtype)  # a mean: squares need float64
    if layout == "sliced":  # channels_last sliced along channels: strides of neither layout
        return x.to(memory_format=torch.channels_last)[:, ::2]
    if layout == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if layout == "transposed":
        return x.transpose(2, 3)
    return x


def _labels(n, k, labels, seed=1):
    if labels is not None:
        return torch.tensor(labels, dtype=torch.int64)
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def _fold_twice(fold, x, y, k, pixel):
    """Fresh state folded with x (init), then x again added: both code paths of the kernel."""
    c, length = x.shape[1], math.prod(x.shape[2:])
    sums = torch.full((k, c, length), float("nan"), dtype=torch.float64)  # init must overwrite
    squares = torch.full((k, c, length if pixel else 1), float("nan"), dtype=torch.float64)
    first = fold(sums, squares, x, y, True)
    once = sums.clone(), squares.clone()
    second = fold(sums, squares, x, y, False)
    return once, (sums, squares), (first, second)


@CSRC
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pixel", [True, False], ids=["pixel", "channel"])
@pytest.mark.parametrize("name,shape,layout,k,labels", SHAPES, ids=[s[0] for s in SHAPES])
def test_csrc_fold_equals_the_reference(name, shape, layout, k, labels, pixel, dtype):
    x = _input(shape, layout, dtype)
    y = _labels(shape[0], k, labels)
    got = _fold_twice(torch.ops.pluginedit.class_maps_fold, x, y, k, pixel)
    ref = _fold_twice(accumulate_maps, x, y, k, pixel)
    _, s_truth, q_truth, _ = class_maps(x, y, k)  # the op's contract on one batch
    q_truth = q_truth if pixel else q_truth.sum(-1, keepdim=True)
    for (gs, gq), (rs, rq) in zip(got[:2], ref[:2]):
        assert torch.equal(gs, rs)  # same additions in the same order: bit for bit
        if pixel:
            assert torch.equal(gq, rq)
        else:
            torch.testing.assert_close(gq, rq, rtol=1e-13, atol=0)
    assert torch.equal(got[0][0], s_truth)
    torch.testing.assert_close(got[0][1], q_truth, rtol=1e-13, atol=0)
    total = (x.double() ** 2).sum()
    for t in got[2]:  # the finite-check value: the batch's total of x^2
        torch.testing.assert_close(t, total, rtol=1e-13, atol=0)


@CSRC
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_csrc_fold_total_is_not_finite_on_a_bad_element(bad):
    x = _input((4, 6, 9, 9), "nchw", torch.float32)
    x[3, 5, 8, 8] = bad
    sums, squares = torch.empty(2, 6, 81, dtype=torch.float64), torch.empty(2, 6, 1).double()
    total = torch.ops.pluginedit.class_maps_fold(sums, squares, x, torch.tensor([0, 1, 0, 1]), True)
    assert not torch.isfinite(total)


@CSRC
def test_csrc_fold_is_the_same_for_any_thread_count():
    x, y = _input((6, 64, 20, 20), "nchw", torch.float32), _labels(6, 3, None)
    out = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(_fold_twice(torch.ops.pluginedit.class_maps_fold, x, y, 3, False))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(out[0][1] + out[0][2], out[1][1] + out[1][2]):
        assert torch.equal(a, b)


@CSRC
def test_csrc_fold_rejects_bad_state_and_labels():
    x = _input((2, 3, 4, 4), "nchw", torch.float32)
    s, q = torch.empty(2, 3, 16, dtype=torch.float64), torch.empty(2, 3, 1, dtype=torch.float64)
    fold = torch.ops.pluginedit.class_maps_fold
    with pytest.raises(RuntimeError, match="label out of range"):
        fold(s, q, x, torch.tensor([0, 2]), True)
    with pytest.raises(RuntimeError, match="sums must be"):
        fold(s[:, :, :15], q, x, torch.tensor([0, 1]), True)
    with pytest.raises(RuntimeError, match="float64"):
        fold(s.float(), q, x, torch.tensor([0, 1]), True)


@CSRC
@pytest.mark.parametrize(
    "k,c,length", [(8, 13, 49), (3, 5, 1), (4, 7, 1073), (2, 0, 5), (1, 3, 257)], ids=str
)
def test_csrc_gram_equals_the_reference(k, c, length):
    """The centred Gram and sums of mu^2 in float64: a different summation order only, so within
    ~L ulps of the largest term (rtol 1e-13 of the group's scale for L <= 2000)."""
    g = torch.Generator().manual_seed(k * 100 + c)
    sums = torch.randn(k, c, length, generator=g, dtype=torch.float64) * 3 + 100
    counts = torch.tensor([3.0, 0, 5, 2, 1, 1, 2, 7][:k], dtype=torch.float64)  # a class with 0
    got = torch.ops.pluginedit.class_maps_gram(sums, counts)
    ref = ops.reference.maps_gram(sums, counts)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        if b.numel():
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13 * b.abs().max().item())
