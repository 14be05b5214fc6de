"""``class_moments`` (K2): per-class power sums of the witness features (ClassMoments).
The plain-PyTorch reference with its torch.library op and fake; the compiled csrc op's fake
and dispatch entry; the Triton launcher's dispatch entry."""

from __future__ import annotations

import torch

from . import _csrc
from ._common import _as_nc_l
from .dispatch import register

# Witness features per (sample, channel), in this order: powers of the spatial sum s, and
# e = exp(-gamma * ||A||_F) with its square. P = len(WITNESS_FEATURES).
WITNESS_FEATURES = ("s", "s2", "s3", "s4", "e", "e2")


@register("class_moments", "torch")
def class_moments(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    gamma: float = 1.0,
    shift: torch.Tensor | None = None,
):
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
    feats = torch.stack([s, s**2, s**3, s**4, e, e**2], dim=2)  # [N, C, 6]
    k, (n, c, p) = num_classes, feats.shape
    sums = torch.zeros(k, c, p, dtype=torch.float64, device=x.device).index_add_(0, labels, feats)
    counts = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(
        0, labels, torch.ones(n, dtype=torch.float64, device=x.device)
    )
    return counts, sums


@torch.library.custom_op("pluginedit::class_moments_ref", mutates_args=())
def class_moments_op(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    gamma: float = 1.0,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return class_moments(x, labels, num_classes, gamma, shift)


def _fake(x, labels, num_classes, gamma=1.0, shift=None):
    f = dict(dtype=torch.float64, device=x.device)
    return x.new_empty((num_classes,), **f), x.new_empty((num_classes, x.shape[1], 6), **f)


class_moments_op.register_fake(_fake)

if _csrc.LOADED:
    torch.library.register_fake("pluginedit::class_moments")(_fake)

    @register("class_moments", "csrc")
    def class_moments_csrc(x, labels, num_classes, gamma=1.0, shift=None):
        """float64 (counts [K], sums [K, C, 6]); deterministic for any thread count."""
        return torch.ops.pluginedit.class_moments(x, labels, int(num_classes), float(gamma), shift)


if _csrc.TRITON:
    from ..triton_kernels import class_moments as triton_class_moments

    @register("class_moments", "triton")
    def class_moments_triton(x, labels, num_classes, gamma=1.0, shift=None, **kwargs):
        """float64 (counts [K], sums [K, C, 6]); kwargs: deterministic=, state=, block sizes."""
        return triton_class_moments.class_moments(x, labels, num_classes, gamma, shift, **kwargs)
