"""WitnessMaps: the witness and TVS statistics from one read equal the two statistics updated
separately (the old path), streamed, merged and serialised."""

import pytest
import torch

from pluginedit.core.errors import InputError
from pluginedit.stats import ClassMaps, ClassMoments, WitnessMaps

K, C = 3, 5


def batches(seed=0, n=(7, 4, 9), shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    for i, m in enumerate(n):
        x = torch.randn(m, C, *shape, generator=g) * (1 + i) + 20.0  # large mean: shift matters
        yield x, torch.randint(0, K, (m,), generator=g)


@pytest.mark.parametrize("full", [False, True])
def test_one_read_equals_the_two_statistics_updated_separately(full):
    fused = WitnessMaps(C, K, gamma=0.1, full=full)
    moments, maps = ClassMoments(C, K, gamma=0.1, backend="torch"), ClassMaps(C, K, full=full)
    for x, y in batches():
        fused.update(x, y)
        moments.update(x, y)
        maps.update(x, y)
    assert torch.equal(fused.moments.count, moments.count)
    torch.testing.assert_close(fused.moments.shift, moments.shift, rtol=1e-13, atol=0)
    torch.testing.assert_close(fused.moments.sums, moments.sums, rtol=1e-11, atol=1e-9)
    assert torch.equal(fused.maps.count, maps.count)
    for name in ("sums", "squares", *(("outer",) if full else ())):
        torch.testing.assert_close(
            getattr(fused.maps, name), getattr(maps, name), rtol=1e-13, atol=0
        )
    assert fused.maps.full == full


def test_large_maps_drop_the_full_covariance_as_class_maps_does():
    fused = WitnessMaps(C, K, full=True, max_full=8)
    fused.update(*next(batches(shape=(3, 4))))
    assert not fused.maps.full and fused.maps.outer is None


def test_merge_and_state_dict_round_trip():
    parts = list(batches(seed=1))
    whole, a, b = WitnessMaps(C, K), WitnessMaps(C, K), WitnessMaps(C, K)
    for x, y in parts:
        whole.update(x, y)
    a.update(*parts[0])
    for x, y in parts[1:]:
        b.update(x, y)
    copy = WitnessMaps(C, K)
    copy.load_state_dict(b.state_dict())
    a.merge(copy)
    torch.testing.assert_close(
        a.moments.centred()[0], whole.moments.centred()[0], rtol=1e-9, atol=1e-6
    )
    torch.testing.assert_close(a.maps.sums, whole.maps.sums, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(a.maps.squares, whole.maps.squares, rtol=1e-12, atol=1e-9)


def test_bad_input_is_rejected_before_any_update():
    stat = WitnessMaps(C, K)
    with pytest.raises(InputError, match="channels"):
        stat.update(torch.randn(4, C + 1, 3, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError):
        stat.update(torch.full((4, C, 3, 3), float("nan")), torch.zeros(4, dtype=torch.long))
    assert stat.maps.sums is None and stat.moments.count.sum() == 0
