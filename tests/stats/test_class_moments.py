"""ClassMoments / ClassMaps: streamed = one batch, plain-loop references, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pluginedit import api
from pluginedit.core.errors import InputError
from pluginedit.scorers.witness import witness_scores
from pluginedit.stats import ClassMaps, ClassMoments

K, C = 3, 4


def data(n, seed=0, scale=10.0, offset=50.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, 3, 5, generator=g) * scale + offset  # large mean: fourth powers need care
    y = torch.arange(n) % K
    return x, y


def loop_reference(x, y, gamma):
    """Plain per-sample loop of the witness power sums (unshifted)."""
    sums = torch.zeros(K, C, 6, dtype=torch.float64)
    for xi, yi in zip(x.double(), y):
        s, e = xi.sum((1, 2)), torch.exp(-gamma * xi.square().sum((1, 2)).sqrt())
        sums[yi] += torch.stack([s, s**2, s**3, s**4, e, e**2], 1)
    return torch.bincount(y, minlength=K).double(), sums


def test_matches_loop_reference_with_true_counts():
    x, y = data(11)
    stat = ClassMoments(C, K, gamma=0.01)
    stat.update(x[:5], y[:5])
    stat.update(x[5:], y[5:])
    counts, sums = loop_reference(x, y, 0.01)
    assert torch.equal(stat.count, counts)
    got = stat.recentred(torch.zeros(C, dtype=torch.float64))
    assert torch.allclose(got, sums, rtol=1e-10)
    rest_n, rest_s = stat.rest()
    assert torch.equal(rest_n, counts.sum() - counts)


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 39), max_size=5, unique=True),
    seed=st.integers(0, 3),
    merge=st.booleans(),
)
def test_streamed_in_any_split_equals_one_batch(cuts, seed, merge):
    x, y = data(40, seed)
    ref = ClassMoments(C, K)
    ref.update(x, y)
    bounds_ = [0] + sorted(cuts) + [40]
    parts = []
    for a, b in zip(bounds_[:-1], bounds_[1:]):
        s = ClassMoments(C, K)
        s.update(x[a:b], y[a:b])
        parts.append(s)
    if merge:  # independent workers, merged
        got = parts[0]
        for p in parts[1:]:
            got.merge(p)
    else:  # one statistic fed batch by batch
        got = ClassMoments(C, K)
        for a, b in zip(bounds_[:-1], bounds_[1:]):
            got.update(x[a:b], y[a:b])
    assert torch.equal(got.count, ref.count)
    for feats in ("linear", "poly", "exp"):
        (m1, c1), (m2, c2) = got.moments(feats), ref.moments(feats)
        shift = (got.shift - ref.shift).reshape(1, C, 1)
        if feats != "exp":  # means of s' differ by the shift; covariances of s do not
            m1 = m1.clone()
            m1[..., 0:1] += shift
        if feats == "linear":
            assert torch.allclose(c1, c2, rtol=1e-8, atol=1e-6)
        assert torch.allclose(m1[..., 0], m2[..., 0], rtol=1e-10)
    s1, s2 = witness_scores(got), witness_scores(ref)
    assert torch.allclose(s1, s2, rtol=1e-6, atol=1e-9)


def test_class_maps_streamed_and_moments():
    x, y = data(30, 1, scale=1.0, offset=0.0)
    whole, parts = ClassMaps(C, K, full=True), ClassMaps(C, K, full=True)
    whole.update(x, y)
    for a in range(0, 30, 7):
        parts.update(x[a : a + 7], y[a : a + 7])
    assert torch.allclose(whole.means(), parts.means()) and torch.allclose(
        whole.covariances(), parts.covariances()
    )
    flat = x.reshape(30, C, -1).double()
    for k in range(K):
        xs = flat[y == k]
        assert torch.allclose(whole.means()[k], xs.mean(0))
        assert torch.allclose(whole.variances()[k], xs.var(0, unbiased=False))
        assert torch.allclose(whole.covariances()[k, 1], torch.cov(xs[:, 1].T, correction=0))


def test_bad_input_is_rejected_or_defined():
    x, y = data(12)
    stat = ClassMoments(C, K)
    with pytest.raises(InputError, match="NaN"):
        stat.update(torch.full_like(x, float("nan")), y)
    with pytest.raises(InputError, match="out of range"):
        stat.update(x, y + 5)
    stat.update(x, torch.where(y == 2, 0, y))  # class 2 absent
    with pytest.raises(InputError, match=r"class\(es\) \[2\] have no samples"):
        witness_scores(stat)
    one = ClassMoments(C, K)
    one.update(x[:3], y[:3])  # one sample per class
    with pytest.raises(InputError, match="fewer than 2"):
        witness_scores(one)
    const = x.clone()
    const[:, 1] = 3.0  # a constant channel scores exactly 0
    stat = ClassMoments(C, K)
    stat.update(const, y)
    for method, feats in [
        ("fisher", "poly"),
        ("mpm", "poly"),
        ("robust", "linear"),
        ("raw", "exp"),
    ]:
        s = witness_scores(stat, method, feats)
        assert torch.isfinite(s).all() and s[1] == 0 and (s[[0, 2, 3]] >= 0).all()


def test_scorer_rejects_nan_activations_and_unknown_options(digits_vgg, digits):
    with pytest.raises(InputError, match="unknown option"):
        api.score(digits_vgg, "witness", data=digits.train, num_classes=10, metod="fisher")
    bad = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(72, 10))
    with torch.no_grad():
        bad[0].bias.fill_(float("inf"))
    with pytest.raises(InputError, match="NaN or Inf"):
        api.score(bad, "witness", data=digits.train, num_classes=10, targets=["0"])


def test_collect_stop_early_gives_the_same_statistics_without_the_rest_of_the_net():
    from pluginedit.capture import Request, collect

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, C, 3), torch.nn.ReLU(), torch.nn.Conv2d(C, 2, 3))
    calls = []
    net[2].register_forward_hook(lambda *a: calls.append(1))
    x, y = torch.randn(20, 1, 7, 7), torch.arange(20) % K
    got = {}
    for stop in (False, True):
        req = Request("1", ClassMoments(C, K))
        got[stop] = collect(net, (x, y), [req], K, batch_size=8, stop_early=stop)[req]
    assert torch.equal(got[True].count, got[False].count)
    assert torch.equal(got[True].sums, got[False].sums)
    assert len(calls) == 3  # three batches ran the last conv without stopping, none with


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_mean_sq_dists_equal_the_per_pair_differences(offset):
    # The K x K Gram of centred class means gives the same distances as subtracting the maps of
    # every pair; a large common offset (near-equal classes) does not cancel them away.
    g = torch.Generator().manual_seed(3)
    k, c = 5, 6
    x = torch.randn(40, c, 4, 4, generator=g, dtype=torch.float64) + offset
    y = torch.arange(40) % k
    x[y == 2] += 0.01  # one class close to another
    maps = ClassMaps(c, k)
    maps.update(x, y)
    mu = maps.means()
    i, j = torch.triu_indices(k, k, offset=1)
    direct = (mu[i] - mu[j]).square().sum(-1)
    torch.testing.assert_close(maps.mean_sq_dists("pairwise_min"), direct, rtol=1e-9, atol=1e-12)
    n = maps.count.reshape(-1, 1, 1)
    rest = (maps.sums.sum(0) - maps.sums) / (n.sum() - n)
    ovr = maps.mean_sq_dists("ovr_min")
    torch.testing.assert_close(ovr, (mu - rest).square().sum(-1), rtol=1e-9, atol=1e-12)
    with pytest.raises(InputError, match="aggregation"):
        maps.mean_sq_dists("pairwise_max")


def test_tvs_iso_scores_equal_the_per_pair_formula():
    # tvs_scores (iso) reads the distances from mean_sq_dists; the reference is the per-pair
    # difference of the two sides' means that the diag/full forms still build.
    from pluginedit.scorers import bounds
    from pluginedit.scorers.tvs import _groups, tvs_scores

    x, y = data(30, seed=4)
    x[y == 1, :2] *= 1.5
    maps = ClassMaps(C, K)
    maps.update(x, y)
    sigma2 = maps.variances().mean()
    for agg in ("pairwise_min", "ovr_min"):
        (mp, mq), _, _ = _groups(maps, agg)
        dist2 = (mp - mq).square().sum(-1)
        want = bounds.neglog_bc_iso(dist2, sigma2, sigma2, maps.sums.shape[-1]).amin(0)
        torch.testing.assert_close(tvs_scores(maps, "iso", agg), want, rtol=1e-9, atol=1e-12)
