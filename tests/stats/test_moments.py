"""ChannelMoments: streaming, merge-invariant, float64-exact against a one-batch reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pluginedit.core.errors import InputError
from pluginedit.stats import ChannelMoments


def reference(x: np.ndarray, y: np.ndarray, k: int):
    """One-batch float64 numpy reference: per-class count, mean, M2 over (sample, position)."""
    c = x.shape[1]
    count, mean, m2 = np.zeros(k), np.zeros((k, c)), np.zeros((k, c))
    for cls in range(k):
        v = x[y == cls].transpose(1, 0, 2).reshape(c, -1)
        count[cls] = v.shape[1]
        if v.shape[1]:
            mean[cls] = v.mean(1)
            m2[cls] = ((v - mean[cls][:, None]) ** 2).sum(1)
    return count, mean, m2


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    c=st.integers(1, 7),
    length=st.sampled_from([1, 4, 49]),
    k=st.integers(1, 4),
    offset=st.floats(-1e3, 1e3),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_any_batch_split_in_any_order_matches_one_batch(n, c, length, k, offset, seed, data):
    rng = np.random.default_rng(seed)
    x = rng.normal(offset, 1.0 + abs(offset) / 10, size=(n, c, length)).astype(np.float32)
    y = rng.integers(0, k, size=n)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6)))
    pieces = [(a, b) for a, b in zip([0] + cuts, cuts + [n]) if b > a]
    order = data.draw(st.permutations(range(len(pieces))))
    stat = ChannelMoments(c, k)
    for i in order:
        a, b = pieces[i]
        stat.update(torch.from_numpy(x[a:b]), torch.from_numpy(y[a:b]))
    count, mean, m2 = reference(x.astype(np.float64), y, k)
    np.testing.assert_array_equal(stat.count.numpy(), count)
    np.testing.assert_allclose(stat.mean.numpy(), mean, rtol=1e-6, atol=1e-9 * (1 + abs(offset)))
    np.testing.assert_allclose(stat.m2.numpy(), m2, rtol=1e-6, atol=1e-9)


def test_merge_of_workers_equals_single_stream():
    x, y = torch.randn(60, 5, 3, 3), torch.randint(0, 3, (60,))
    whole, a, b = ChannelMoments(5, 3), ChannelMoments(5, 3), ChannelMoments(5, 3)
    whole.update(x, y)
    a.update(x[:17], y[:17])
    b.update(x[17:], y[17:])
    merged = a.merge(b)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[key], value, rtol=1e-12, atol=1e-12)
    count, mean, m2 = whole.overall()
    flat = x.double().transpose(0, 1).reshape(5, -1)
    torch.testing.assert_close(mean, flat.mean(1))
    torch.testing.assert_close(m2 / (count - 1), flat.var(1))


def test_empty_class_is_zero_not_nan():
    stat = ChannelMoments(3, 4)
    stat.update(torch.randn(8, 3, 2, 2), torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]))
    assert stat.count[2:].eq(0).all()
    assert torch.isfinite(stat.variance()).all() and stat.mean[2:].eq(0).all()


def test_bad_input_is_a_clear_error():
    stat = ChannelMoments(3, 2)
    with pytest.raises(InputError, match="NaN"):
        stat.update(torch.tensor([[float("nan"), 0.0, 1.0]]), torch.tensor([0]))
    with pytest.raises(InputError, match="out of range"):
        stat.update(torch.randn(2, 3), torch.tensor([0, 2]))
    with pytest.raises(InputError, match="shape"):
        stat.merge(ChannelMoments(4, 2))
