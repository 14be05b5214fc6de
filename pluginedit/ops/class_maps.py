"""``class_maps`` (S1): per-class sums of whole activation maps (ClassMaps, TVSPrune).
The plain-PyTorch reference (the contract) and the torch.library op ``pluginedit::class_maps``
(the reference is its only kernel)."""

from __future__ import annotations

import torch

from ._common import _as_nc_l
from .dispatch import define, register


@register("class_maps", "torch")
def class_maps(x: torch.Tensor, labels: torch.Tensor, num_classes: int, full: bool = False):
    """S1. Per-class sums of the activation maps of one batch (TVSPrune's class-mean maps).

    x [N, C, *spatial] (or [N, C]), labels [N] int64 in [0, K). With L = prod(spatial):
    returns float64 (counts [K], sums [K, C, L], squares [K, C, L], outer [K, C, L, L] or None)
    where sums / squares are per-class sums of x and x^2 and, with ``full``, outer holds the
    per-class sums of x x^T over space (for full-covariance Gaussians of small maps).
    """
    v = _as_nc_l(x).double()
    return map_sums(v, v.square(), labels, num_classes, full)


def map_sums(v, sq, labels, num_classes: int, full: bool = False):
    """The per-class sums of ``class_maps`` from the float64 maps v [N, C, L] and their squares
    sq: for statistics that read the activations once for several purposes (stats.WitnessMaps)."""
    n, c, length = v.shape
    k = num_classes
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=v.device)  # noqa: E731
    counts = zeros(k).index_add_(0, labels, torch.ones(n, dtype=torch.float64, device=v.device))
    sums = zeros(k, c, length).index_add_(0, labels, v)
    squares = zeros(k, c, length).index_add_(0, labels, sq)
    outer = (
        zeros(k, c, length, length).index_add_(0, labels, v.unsqueeze(3) * v.unsqueeze(2))
        if full
        else None
    )
    return counts, sums, squares, outer


# Elements per block of accumulate_maps: small enough to stay in L2 and below ATen's parallel
# grain (32768), above which a thread pool shared with other work stalls on a loaded CPU.
BLOCK = 32768


def accumulate_maps(sums, squares, x, labels) -> torch.Tensor:
    """Adds the per-class sums of ``class_maps`` of batch ``x`` [N, C, *spatial] (any float
    dtype) into the float64 state ``sums`` / ``squares`` [K, C, L] in place, and returns the
    batch's float64 min + max of x (CPU) or total of x^2 (0-dim; NaN or Inf in x make it
    non-finite: the finite check).

    Same numbers as the reference up to the order of additions: each element is converted to
    float64 (exact from fp32/bf16/fp16), squared and added in float64. The difference is memory:
    on a CPU each sample is added into its class's rows in place; elsewhere x is walked in blocks
    of ~BLOCK elements that stay in cache. Either way no float64 copy of the whole batch, no
    squared copy and no fresh [K, C, L] results are materialised (on a CPU the page faults of
    such fresh buffers cost more than the arithmetic)."""
    v = _as_nc_l(x)
    if v.device.type == "cpu":
        # one in-place pass per sample into its class's rows: fp32 elements are cast to float64
        # on the fly inside add_ / addcmul_ (the product is formed in float64), no temporaries;
        # the labels are read on the host, which on a CPU tensor is no device sync
        for i, k in enumerate(labels.tolist()):
            sums[k].add_(v[i])
            squares[k].addcmul_(v[i], v[i])
        lo, hi = torch.aminmax(v)  # NaN and Inf reach it; one fast streaming read
        return lo.double() + hi.double()
    return _accumulate_blocked(sums, squares, v, labels)


def _accumulate_blocked(sums, squares, v, labels) -> torch.Tensor:
    """``accumulate_maps`` without reading the labels on the host (for accelerators)."""
    n, c, length = v.shape
    flat, s2, q2 = v.reshape(n, c * length), sums.view(-1, c * length), squares.view(-1, c * length)
    step = max(1, BLOCK // max(n, 1))
    totals = []
    for i in range(0, c * length, step):
        vb = flat[:, i : i + step].double()
        s2[:, i : i + step].index_add_(0, labels, vb)
        vb.mul_(vb)
        q2[:, i : i + step].index_add_(0, labels, vb)
        totals.append(vb.sum())
    return torch.stack(totals).sum() if totals else sums.new_zeros(())


def _kernel(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, full: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op's kernel (and fake) on every device: the reference, with ``outer`` an empty
    [K, C, 0, 0] tensor when not ``full`` (an op returns tensors, not None)."""
    counts, sums, squares, outer = class_maps(x, labels, num_classes, full)
    if outer is None:
        outer = sums.new_zeros((num_classes, x.shape[1], 0, 0))
    return counts, sums, squares, outer


OP = define("class_maps", _kernel)


@register("class_maps", "auto")
def class_maps_op(x, labels, num_classes, full=False):
    """The torch.library op, with ``outer`` None when not ``full`` (as the reference)."""
    counts, sums, squares, outer = OP(x, labels, int(num_classes), bool(full))
    return counts, sums, squares, outer if full else None
