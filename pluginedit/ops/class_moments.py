"""``class_moments`` (K2): per-class power sums of the witness features (ClassMoments).

The whole op in one file: the contract (``class_moments``, the plain-PyTorch reference), the
torch.library op ``pluginedit::class_moments`` (``_kernel``: Triton on CUDA tensors, else the
reference; the C++ kernels of csrc/class_moments*.{cpp,cu} register with it) and the
implementations ``backend=`` can force."""

from __future__ import annotations

import torch

from . import _csrc
from ._common import _as_nc_l
from .dispatch import define, register

# Witness features per (sample, channel), in this order: powers of the spatial sum s, and
# e = exp(-gamma * ||A||_F) with its square. P = len(WITNESS_FEATURES).
WITNESS_FEATURES = ("s", "s2", "s3", "s4", "e", "e2")

if _csrc.TRITON:
    from ..triton_kernels import class_moments as triton_class_moments


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
    Returns (counts [K], sums [K, C, 6]), both float64 on x's device, with sums[k, c] = sum over
    samples of class k of (s, s^2, s^3, s^4, e, e^2); absent classes have zero rows.

    The contract of every backend: fresh float64 results per call (accumulating across batches
    is the statistic's job), spatial reductions in at least fp32 (float64 here; C++: fp32
    blocks of 16 folded into float64), the features formed in float64.
    """
    v = _as_nc_l(x).double()
    return power_sums(v.sum(2), v.square().sum(2), labels, num_classes, gamma, shift)


def power_sums(s, q, labels, num_classes: int, gamma: float = 1.0, shift=None):
    """The witness transform and the per-class sums of ``class_moments`` from the per-(sample,
    channel) spatial sums s [N, C] and sums of squares q [N, C] (float64): for statistics that
    reduce the activations once for several purposes (stats.WitnessMaps)."""
    if shift is not None:
        s = s - shift.double().to(s.device)
    e = torch.exp(-gamma * q.sqrt())
    feats = torch.stack([s, s**2, s**3, s**4, e, e**2], dim=2)  # [N, C, 6]
    k, (n, c, p) = num_classes, feats.shape
    sums = torch.zeros(k, c, p, dtype=torch.float64, device=s.device).index_add_(0, labels, feats)
    counts = torch.zeros(k, dtype=torch.float64, device=s.device).index_add_(
        0, labels, torch.ones(n, dtype=torch.float64, device=s.device)
    )
    return counts, sums


def _kernel(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    gamma: float = 1.0,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's Python kernel (and fake): Triton on CUDA tensors where triton is installed,
    the reference elsewhere."""
    if x.is_cuda and _csrc.TRITON:
        return triton_class_moments.class_moments(x, labels, num_classes, gamma, shift)
    return class_moments(x, labels, num_classes, gamma, shift)


OP = define("class_moments", _kernel)


@register("class_moments", "auto")
@register("class_moments", "csrc")
def class_moments_op(x, labels, num_classes, gamma=1.0, shift=None):
    """The torch.library op (``csrc``: forced where the extension registered a kernel)."""
    return OP(x, labels, int(num_classes), float(gamma), shift)


if _csrc.TRITON:

    @register("class_moments", "triton")
    def class_moments_triton(x, labels, num_classes, gamma=1.0, shift=None, **kwargs):
        """The Triton launcher; kwargs: deterministic=, block_c=, block_l=."""
        return triton_class_moments.class_moments(x, labels, num_classes, gamma, shift, **kwargs)
