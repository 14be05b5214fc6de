"""``class_maps`` (S1): per-class sums of whole activation maps (ClassMaps, TVSPrune).
The plain-PyTorch reference and its torch.library op (with fake)."""

from __future__ import annotations

import math

import torch

from ._common import _as_nc_l
from .dispatch import register


@register("class_maps", "torch")
def class_maps(x: torch.Tensor, labels: torch.Tensor, num_classes: int, full: bool = False):
    """S1. Per-class sums of the activation maps of one batch (TVSPrune's class-mean maps).

    x [N, C, *spatial] (or [N, C]), labels [N] int64 in [0, K). With L = prod(spatial):
    returns float64 (counts [K], sums [K, C, L], squares [K, C, L], outer [K, C, L, L] or None)
    where sums / squares are per-class sums of x and x^2 and, with ``full``, outer holds the
    per-class sums of x x^T over space (for full-covariance Gaussians of small maps).
    """
    v = _as_nc_l(x).double()
    n, c, length = v.shape
    k = num_classes
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=x.device)  # noqa: E731
    counts = zeros(k).index_add_(0, labels, torch.ones(n, dtype=torch.float64, device=x.device))
    sums = zeros(k, c, length).index_add_(0, labels, v)
    squares = zeros(k, c, length).index_add_(0, labels, v.square())
    outer = (
        zeros(k, c, length, length).index_add_(0, labels, v.unsqueeze(3) * v.unsqueeze(2))
        if full
        else None
    )
    return counts, sums, squares, outer


@torch.library.custom_op("pluginedit::class_maps_ref", mutates_args=())
def class_maps_op(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, full: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like ``class_maps``; ``outer`` is an empty [K, C, 0, 0] tensor when not ``full``."""
    counts, sums, squares, outer = class_maps(x, labels, num_classes, full)
    if outer is None:
        outer = sums.new_zeros((num_classes, x.shape[1], 0, 0))
    return counts, sums, squares, outer


@class_maps_op.register_fake
def _(x, labels, num_classes, full=False):
    k, c, length = num_classes, x.shape[1], math.prod(x.shape[2:])
    f = dict(dtype=torch.float64, device=x.device)
    m = length if full else 0
    return (
        x.new_empty((k,), **f),
        x.new_empty((k, c, length), **f),
        x.new_empty((k, c, length), **f),
        x.new_empty((k, c, m, m), **f),
    )
