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
