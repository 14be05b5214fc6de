"""``channel_moments``: per-class count, mean and M2 of every channel (ChannelMoments).
The plain-PyTorch reference (the contract) and the torch.library op ``pluginedit::channel_moments``
(the reference is its only kernel)."""

from __future__ import annotations

import torch

from ._common import _as_nc_l
from .dispatch import define, register


@register("channel_moments", "torch")
def channel_moments(x: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class count, mean and M2 (sum of squared deviations) of every channel of one batch.

    Every element of a channel (all samples, all positions) is one observation.
    Returns float64 tensors count [K], mean [K, C], m2 [K, C]; classes absent from the batch
    have count 0, mean 0 and m2 0.
    """
    v = _as_nc_l(x).double()
    n, c, length = v.shape
    k = num_classes
    count = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(
        0, labels, torch.full((n,), float(length), dtype=torch.float64, device=x.device)
    )
    sums = torch.zeros(k, c, dtype=torch.float64, device=x.device).index_add_(0, labels, v.sum(2))
    mean = sums / count.clamp_min(1).unsqueeze(1)
    dev = v - mean[labels].unsqueeze(2)
    m2 = torch.zeros(k, c, dtype=torch.float64, device=x.device).index_add_(
        0, labels, dev.square().sum(2)
    )
    return count, mean, m2


def _kernel(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op's kernel (and fake) on every device: the reference."""
    return channel_moments(x, labels, num_classes)


OP = define("channel_moments", _kernel)


@register("channel_moments", "auto")
def channel_moments_op(x, labels, num_classes):
    """The torch.library op."""
    return OP(x, labels, int(num_classes))
