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


@register("class_maps_fold", "torch")
def accumulate_maps(sums, squares, x, labels, init: bool = False) -> torch.Tensor:
    """The per-class sums of ``class_maps`` of batch ``x`` [N, C, *spatial] (any float dtype)
    added in place into the float64 state ``sums`` [K, C, L] and ``squares`` ([K, C, L] per
    pixel, or [K, C, 1]: per channel, summed over space too); with ``init`` the state is fresh
    memory (``torch.empty``) that is overwritten, not added to. Returns a float64 0-dim value
    that is finite iff x is (NaN or Inf in x make it non-finite: the statistic's finite check):
    here min + max of x (CPU) or the total of x^2, in the C++ kernel the total of x^2.

    The reference (and the contract of csrc/class_maps.cpp): each element converted to float64
    (exact from fp32/bf16/fp16), squared and added in float64, samples in batch order, so the
    per-pixel sums are the reference op's bit for bit. No float64 copy of the whole batch, no
    squared copy and no fresh [K, C, L] results are materialised (on a CPU the page faults of
    such fresh buffers cost more than the arithmetic): on a CPU each sample is added into its
    class's rows in place; elsewhere x is walked in blocks of ~BLOCK elements."""
    if init:
        sums.zero_()
        squares.zero_()
    v = _as_nc_l(x)
    if v.device.type != "cpu":
        return _accumulate_blocked(sums, squares, v, labels)
    pixel = squares.shape[-1] == v.shape[2]
    # one in-place pass per sample into its class's rows: fp32 elements are cast to float64 on
    # the fly inside add_ / addcmul_; the labels are read on the host (no device sync on a CPU)
    for i, k in enumerate(labels.tolist()):
        sums[k].add_(v[i])
        if pixel:
            squares[k].addcmul_(v[i], v[i])
        else:
            vi = v[i].double()
            squares[k].add_((vi * vi).sum(-1, keepdim=True))
    if v.numel() == 0:
        return sums.new_zeros(())
    lo, hi = torch.aminmax(v)  # NaN and Inf reach it; one fast streaming read
    return lo.double() + hi.double()


def _accumulate_blocked(sums, squares, v, labels) -> torch.Tensor:
    """``accumulate_maps`` without reading the labels on the host (for accelerators): blocks of
    whole channels of ~BLOCK elements."""
    n, c, length = v.shape
    pixel = squares.shape[-1] == length
    step = max(1, BLOCK // max(n * length, 1))
    totals = []
    for i in range(0, c, step):
        vb = v[:, i : i + step].double()
        sums[:, i : i + step].index_add_(0, labels, vb)
        vb.mul_(vb)
        squares[:, i : i + step].index_add_(0, labels, vb if pixel else vb.sum(-1, keepdim=True))
        totals.append(vb.sum())
    return torch.stack(totals).sum() if totals else sums.new_zeros(())


def _fold_kernel(
    sums: torch.Tensor, squares: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, init: bool
) -> torch.Tensor:
    """The fold op's Python kernel on every device: the reference."""
    return accumulate_maps(sums, squares, x, labels, init)


FOLD = torch.library.custom_op(
    "pluginedit::class_maps_fold", _fold_kernel, mutates_args=("sums", "squares")
)
FOLD.register_fake(lambda sums, squares, x, labels, init: sums.new_empty(()))


@register("class_maps_fold", "auto")
@register("class_maps_fold", "csrc")
def fold_op(sums, squares, x, labels, init: bool = False) -> torch.Tensor:
    """The torch.library op ``pluginedit::class_maps_fold`` (csrc/class_maps.cpp on the CPU)."""
    return torch.ops.pluginedit.class_maps_fold(sums, squares, x, labels, bool(init))


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


@register("class_maps_gram", "torch")
def maps_gram(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the pooled (iso) TVS bound reads from ClassMaps' float64 state sums [K, C, L] and
    counts [K]: with mu = sums / max(counts, 1), per channel the Gram [C, K, K] of the class-mean
    maps centred per pixel over classes (z = mu - mu.mean(0); squared mean distances from it do
    not cancel catastrophically for near-equal classes) and msq [K, C] = sum over space of mu^2.
    Both float64. The reference, channel block by block (no fresh [K, C, L] tensor)."""
    k, c, length = sums.shape
    n = counts.to(sums).clamp_min(1).reshape(-1, 1, 1)
    step = max(1, 16 * BLOCK // max(k * length, 1))
    grams, msqs = [], []
    for i in range(0, c, step):
        mu = sums[:, i : i + step] / n
        msqs.append(mu.square().sum(-1))
        z = (mu - mu.mean(0, keepdim=True)).transpose(0, 1)  # [c, K, L]
        grams.append(z @ z.transpose(1, 2))
    if not grams:
        return sums.new_zeros(0, k, k), sums.new_zeros(k, 0)
    return torch.cat(grams), torch.cat(msqs, 1)


def _gram_kernel(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram op's Python kernel (and fake) on every device: the reference."""
    return maps_gram(sums, counts)


GRAM = torch.library.custom_op("pluginedit::class_maps_gram", _gram_kernel, mutates_args=())
GRAM.register_fake(_gram_kernel)


@register("class_maps_gram", "auto")
@register("class_maps_gram", "csrc")
def gram_op(sums, counts) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch.library op ``pluginedit::class_maps_gram`` (csrc/class_maps.cpp on the CPU)."""
    return torch.ops.pluginedit.class_maps_gram(sums, counts)
