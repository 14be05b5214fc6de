"""ClassMaps folded in place (ops.class_maps.accumulate_maps): the same sums as the reference op on
odd shapes and strided inputs, the finite check before anything is trusted, and the blocked
derived quantities (pooled variance, mean distances) equal to their whole-tensor formulas."""

import pytest
import torch

from pluginedit.core.errors import InputError
from pluginedit.ops.class_maps import _accumulate_blocked, accumulate_maps, class_maps
from pluginedit.stats import ClassMaps

K = 4


def batch(n=11, c=6, shape=(5, 7), seed=0, mean=300.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *shape, generator=g) * 2 + mean  # large mean: squares need fp64
    return x, torch.randint(0, K, (n,), generator=g)


@pytest.mark.parametrize("fold", [accumulate_maps, _accumulate_blocked])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "features"])
def test_fold_equals_the_reference_op(fold, layout):
    x, y = batch()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = batch(c=12)[0][:, ::2]
    elif layout == "features":
        x = x[:, :, 0, 0]
    _, s_ref, q_ref, _ = class_maps(x, y, K)
    sums, squares = torch.zeros_like(s_ref), torch.zeros_like(q_ref)
    v = x.reshape(x.shape[0], x.shape[1], -1)
    total = fold(sums, squares, v if fold is _accumulate_blocked else x, y)
    assert torch.isfinite(total)
    torch.testing.assert_close(sums, s_ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(squares, q_ref, rtol=1e-14, atol=0)


def test_streamed_class_maps_equal_one_reference_batch_and_reject_nan():
    x, y = batch(n=23, seed=1)
    maps = ClassMaps(6, K)
    for xb, yb in zip(x.split(5), y.split(5)):
        maps.update(xb, yb)
    counts, s_ref, q_ref, _ = class_maps(x, y, K)
    assert torch.equal(maps.count, counts)
    torch.testing.assert_close(maps.sums, s_ref, rtol=1e-13, atol=0)
    torch.testing.assert_close(maps.squares, q_ref, rtol=1e-13, atol=0)
    bad = x[:3].clone()
    bad[1, 2, 3, 4] = float("inf")
    with pytest.raises(InputError, match="NaN or Inf"):
        maps.update(bad, y[:3])
    with pytest.raises(InputError, match="does not match"):
        maps.update(x[:3, :, :4], y[:3])


@pytest.mark.parametrize("aggregation", ["pairwise_min", "ovr_min"])
def test_blocked_scores_equal_whole_tensor_formulas(aggregation):
    x, y = batch(n=40, c=9, shape=(30, 31), seed=2, mean=0.5)  # several channel blocks
    maps = ClassMaps(9, K)
    maps.update(x, y)
    maps.block = K * 930 * 2  # two channels a block: five blocks
    assert len(maps._channel_blocks()) == 5
    torch.testing.assert_close(maps.pooled_variance(), maps.variances().mean(), rtol=1e-12, atol=0)
    mu = maps.means()
    if aggregation == "pairwise_min":
        i, j = torch.triu_indices(K, K, offset=1)
        want = (mu[i] - mu[j]).square().sum(-1)
    else:
        n = maps.count.reshape(-1, 1, 1)
        rest = (maps.sums.sum(0, keepdim=True) - maps.sums) / (n.sum() - n)
        want = (mu - rest).square().sum(-1)
    torch.testing.assert_close(maps.mean_sq_dists(aggregation), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("aggregation", ["pairwise_min", "ovr_min"])
def test_per_channel_squares_give_the_same_iso_quantities(aggregation):
    """pixel_squares=False keeps sum over space of x^2 per (class, channel): the pooled variance
    and the mean distances (all the iso TVS bound reads) equal the per-pixel statistic's."""
    x, y = batch(n=30, c=7, shape=(9, 11), seed=3, mean=5.0)
    pixel, channel = ClassMaps(7, K), ClassMaps(7, K, pixel_squares=False)
    for xb, yb in zip(x.split(8), y.split(8)):
        pixel.update(xb, yb)
        channel.update(xb, yb)
    assert channel.squares.shape == (K, 7, 1)
    torch.testing.assert_close(channel.sums, pixel.sums, rtol=0, atol=0)
    torch.testing.assert_close(channel.squares[..., 0], pixel.squares.sum(-1), rtol=1e-13, atol=0)
    torch.testing.assert_close(
        channel.pooled_variance(), pixel.pooled_variance(), rtol=1e-10, atol=0
    )
    torch.testing.assert_close(
        channel.mean_sq_dists(aggregation), pixel.mean_sq_dists(aggregation), rtol=1e-12, atol=0
    )
    with pytest.raises(InputError, match="pixel_squares"):
        channel.variances()
    with pytest.raises(InputError, match="per-pixel squares"):
        ClassMaps(7, K, full=True, pixel_squares=False)
