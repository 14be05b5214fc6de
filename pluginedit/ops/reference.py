"""Plain-PyTorch references of every statistics op: the ``torch`` backend, and what the
Triton and csrc kernels are tested against. Kept as plain as possible; never tuned to a kernel."""
from __future__ import annotations

import math

import torch

from . import register


def _as_nc_l(x: torch.Tensor) -> torch.Tensor:
    """[N, C, *spatial] or [N, C] -> [N, C, L] (L = 1 for features)."""
    # An explicit length (not -1) so an empty batch (N = 0) reshapes too.
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


@register("channel_moments", "torch")
def channel_moments(x: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class count, mean and M2 (sum of squared deviations) of every channel of one batch.

    Every element of a channel (all samples, all positions) is one observation.
    Returns float64 tensors count [K], mean [K, C], m2 [K, C]; classes absent from the batch
    have count 0, mean 0 and m2 0.
    """
    v = _as_nc_l(x).double()
    n, c, l = v.shape
    k = num_classes
    count = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(
        0, labels, torch.full((n,), float(l), dtype=torch.float64, device=x.device))
    sums = torch.zeros(k, c, dtype=torch.float64, device=x.device).index_add_(0, labels, v.sum(2))
    mean = sums / count.clamp_min(1).unsqueeze(1)
    dev = v - mean[labels].unsqueeze(2)
    m2 = torch.zeros(k, c, dtype=torch.float64, device=x.device).index_add_(0, labels, dev.square().sum(2))
    return count, mean, m2


# Witness features per (sample, channel), in this order: powers of the spatial sum s, and
# e = exp(-gamma * ||A||_F) with its square. P = len(WITNESS_FEATURES).
WITNESS_FEATURES = ("s", "s2", "s3", "s4", "e", "e2")


@register("class_moments", "torch")
def class_moments(x: torch.Tensor, labels: torch.Tensor, num_classes: int, gamma: float = 1.0,
                  shift: torch.Tensor | None = None):
    """K2. Per-class power sums of the witness features of one batch.

    x [N, C, *spatial] (any float dtype, any memory format), labels [N] int64 in [0, K).
    Per sample n and channel c: s = sum over space of x[n, c] (minus ``shift[c]`` when given, to
    keep fourth powers well conditioned), r = ||x[n, c]||_F, e = exp(-gamma * r).
    Returns float64 (counts [K], sums [K, C, 6]) with sums[k, c] = sum over samples of class k of
    (s, s^2, s^3, s^4, e, e^2). Classes absent from the batch have zero rows.
    """
    v = _as_nc_l(x).double()
    s = v.sum(2)
    if shift is not None:
        s = s - shift.double().to(s.device)
    e = torch.exp(-gamma * v.square().sum(2).sqrt())
    feats = torch.stack([s, s ** 2, s ** 3, s ** 4, e, e ** 2], dim=2)            # [N, C, 6]
    k, (n, c, p) = num_classes, feats.shape
    sums = torch.zeros(k, c, p, dtype=torch.float64, device=x.device).index_add_(0, labels, feats)
    counts = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(
        0, labels, torch.ones(n, dtype=torch.float64, device=x.device))
    return counts, sums


def _patches(x: torch.Tensor, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """[N, C, H, W] -> patch rows [N * L, C * kh * kw] in conv-weight order (c, kh, kw)."""
    cols = torch.nn.functional.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@register("gram", "torch")
def gram(x: torch.Tensor, kernel_size=None, stride=1, padding=0, dilation=1, chunk: int = 64):
    """K3. Gram of the input rows of a linear layer, or of the unfolded patches of a conv.

    x [M, D] (linear; leading dims are flattened: [..., D]) or [N, C, H, W] with ``kernel_size``
    (conv, groups=1). Returns float64 (G [D, D] = sum p p^T, s [D] = sum p, n = number of rows).
    Conv patches are built ``chunk`` samples at a time so the full unfold never exists at once.
    """
    if kernel_size is None:
        rows = x.reshape(-1, x.shape[-1]).double()
        return rows.T @ rows, rows.sum(0), rows.shape[0]
    g = s = None
    n = 0
    for part in x.split(chunk):
        rows = _patches(part.double(), kernel_size, stride, padding, dilation)
        g = rows.T @ rows if g is None else g + rows.T @ rows
        s = rows.sum(0) if s is None else s + rows.sum(0)
        n += rows.shape[0]
    if g is None:  # empty batch
        d = x.shape[1] * (kernel_size[0] * kernel_size[1] if isinstance(kernel_size, tuple) else kernel_size ** 2)
        return (torch.zeros(d, d, dtype=torch.float64, device=x.device),
                torch.zeros(d, dtype=torch.float64, device=x.device), 0)
    return g, s, n


@register("class_maps", "torch")
def class_maps(x: torch.Tensor, labels: torch.Tensor, num_classes: int, full: bool = False):
    """S1. Per-class sums of the activation maps of one batch (TVSPrune's class-mean maps).

    x [N, C, *spatial] (or [N, C]), labels [N] int64 in [0, K). With L = prod(spatial):
    returns float64 (counts [K], sums [K, C, L], squares [K, C, L], outer [K, C, L, L] or None)
    where sums / squares are per-class sums of x and x^2 and, with ``full``, outer holds the
    per-class sums of x x^T over space (for full-covariance Gaussians of small maps).
    """
    v = _as_nc_l(x).double()
    n, c, l = v.shape
    k = num_classes
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=x.device)  # noqa: E731
    counts = zeros(k).index_add_(0, labels, torch.ones(n, dtype=torch.float64, device=x.device))
    sums = zeros(k, c, l).index_add_(0, labels, v)
    squares = zeros(k, c, l).index_add_(0, labels, v.square())
    outer = zeros(k, c, l, l).index_add_(0, labels, v.unsqueeze(3) * v.unsqueeze(2)) if full else None
    return counts, sums, squares, outer
