import pytest
import torch
from torch import nn

from pluginedit.capture import Request, collect
from pluginedit.core.errors import InputError
from pluginedit.stats import Gram


def _explicit_patches(x, conv):
    cols = nn.functional.unfold(
        x.double(),
        conv.kernel_size,
        dilation=conv.dilation,
        padding=conv.padding,
        stride=conv.stride,
    )
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_conv_gram_matches_explicit_unfold(stride, padding, dilation):
    conv = nn.Conv2d(3, 4, 3, stride, padding, dilation)
    x = torch.randn(10, 3, 9, 7) + 5.0  # a large mean: centring must not cancel
    g = Gram.for_module(conv, chunk=3, backend="torch")  # several chunks per batch, fp64
    for part in x.split(4):
        g.update(part)
    p = _explicit_patches(x, conv)
    assert g.count == p.shape[0]
    torch.testing.assert_close(g.mean, p.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.second_moment(), p.T @ p / p.shape[0], rtol=1e-10, atol=1e-10)
    c = p - p.mean(0)
    torch.testing.assert_close(g.covariance(), c.T @ c / p.shape[0], rtol=1e-10, atol=1e-10)


def test_linear_gram_merge_equals_one_pass():
    x = torch.randn(7, 5, 6) * 3 + 100.0  # tokens [..., D]
    a, b, whole = (Gram(6, backend="torch") for _ in range(3))
    a.update(x[:3])
    b.update(x[3:])
    whole.update(x)
    a.merge(b)
    torch.testing.assert_close(a.covariance(), whole.covariance(), rtol=1e-9, atol=1e-9)
    rows = x.reshape(-1, 6).double()
    ref = torch.cov(rows.T, correction=0)
    torch.testing.assert_close(a.covariance(), ref, rtol=1e-9, atol=1e-9)
    empty = Gram(6, backend="torch")
    a.merge(empty)  # merging nothing is a no-op
    torch.testing.assert_close(a.covariance(), ref, rtol=1e-9, atol=1e-9)


def test_gram_collected_through_capture_hooks():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 3, 3))
    x = torch.randn(20, 1, 6, 6)
    req = Request("2", Gram.for_module(model[2], backend="torch"), where="input")
    g = collect(model, (x, torch.zeros(20, dtype=torch.long)), [req], batch_size=8)[req]
    p = _explicit_patches(model[1](model[0](x)).detach(), model[2])
    torch.testing.assert_close(g.second_moment(), p.T @ p / p.shape[0], rtol=1e-9, atol=1e-9)


def test_gram_rejects_bad_input():
    g = Gram.for_module(nn.Conv2d(3, 4, 3))
    with pytest.raises(InputError, match="width"):
        g.update(torch.randn(2, 5, 8, 8))
    with pytest.raises(InputError, match="NaN"):
        g.update(torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(InputError, match="no samples"):
        g.covariance()
    with pytest.raises(InputError, match="groups"):
        Gram.for_module(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(InputError, match="cannot merge"):
        Gram(4).merge(Gram(5))


@pytest.mark.parametrize("backend", ["csrc", "triton"])
def test_every_gram_backend_agrees_with_the_fp64_reference(backend):
    from pluginedit import ops

    if backend not in ops.available("gram"):
        pytest.skip(f"{backend} gram backend not available")
    conv = nn.Conv2d(5, 2, 3, padding=1)
    x = torch.randn(9, 5, 7, 6) + 1.0
    ref, other = Gram.for_module(conv, backend="torch"), Gram.for_module(conv, backend=backend)
    try:
        other.update(x)
    except RuntimeError as e:  # e.g. triton on a machine without a GPU or interpreter
        pytest.skip(f"{backend} cannot run here: {e}")
    ref.update(x)
    torch.testing.assert_close(other.second_moment(), ref.second_moment(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other.mean, ref.mean, rtol=1e-5, atol=1e-6)
