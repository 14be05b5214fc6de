"""ClassMoments' finite check runs on the sums (one host sync), yet a batch with NaN or Inf is
still named as such and leaves the statistic as it was; the first batch's shift (fp32 spatial
sums, no float64 copy) changes no derived number."""

import pytest
import torch

from pluginedit.core.errors import InputError
from pluginedit.stats import ClassMoments

C, K = 4, 3


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, 3, 5, generator=g) * 4 + 40, torch.arange(n) % K


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_batch_is_named_and_changes_nothing(bad):
    x, y = data(9)
    stat = ClassMoments(C, K)
    stat.update(x, y)
    before = {k: v.clone() for k, v in stat.state_dict().items()}
    x2 = data(6, seed=1)[0]
    x2[2, 1, 0, 3] = bad
    with pytest.raises(InputError, match="NaN or Inf"):
        stat.update(x2, y[:6])
    for k, v in stat.state_dict().items():
        assert torch.equal(v, before[k]), k
    fresh = ClassMoments(C, K)
    with pytest.raises(InputError, match="NaN or Inf"):
        fresh.update(x2, y[:6])
    assert fresh.shift is None and fresh.count.sum() == 0


def test_centred_sums_do_not_depend_on_the_shift():
    x, y = data(12)
    a, b = ClassMoments(C, K), ClassMoments(C, K, shift=torch.zeros(C))
    a.update(x, y)
    b.update(x, y)
    (sa, ma), (sb, mb) = a.centred(), b.centred()
    torch.testing.assert_close(ma, mb, rtol=1e-12, atol=0)
    torch.testing.assert_close(sa, sb, rtol=1e-7, atol=1e-6)
