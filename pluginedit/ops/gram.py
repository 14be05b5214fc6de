"""``gram`` (K3): the Gram of a linear layer's input rows or of a conv's unfolded patches (Gram).
The plain-PyTorch reference with its torch.library op and fake; the compiled csrc op's fake and
dispatch entry; the Triton launcher's dispatch entry."""

from __future__ import annotations

import torch

from . import _csrc
from .dispatch import register


def _patches(x: torch.Tensor, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """[N, C, H, W] -> patch rows [N * L, C * kh * kw] in conv-weight order (c, kh, kw)."""
    cols = torch.nn.functional.unfold(
        x, kernel_size, dilation=dilation, padding=padding, stride=stride
    )
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
        d = x.shape[1] * (
            kernel_size[0] * kernel_size[1] if isinstance(kernel_size, tuple) else kernel_size**2
        )
        return (
            torch.zeros(d, d, dtype=torch.float64, device=x.device),
            torch.zeros(d, dtype=torch.float64, device=x.device),
            0,
        )
    return g, s, n


def _ints(v, default) -> list[int]:
    if v is None:
        return [default]
    return [int(a) for a in v] if isinstance(v, (tuple, list)) else [int(v)]


def _conv_rows(x: torch.Tensor, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    """(number of patch rows M, patch width D) of a conv input, from shapes only."""
    n, c, h, w = x.shape
    k, s, p, d = (_ints(kernel_size, 1), _ints(stride, 1), _ints(padding, 0), _ints(dilation, 1))
    ho = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + 2 * p[-1] - d[-1] * (k[-1] - 1) - 1) // s[-1] + 1
    return n * max(ho, 0) * max(wo, 0), c * k[0] * k[-1]


@torch.library.custom_op("pluginedit::gram_ref", mutates_args=())
def gram_op(
    x: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, s) of the reference in float64; ``kernel_size=[]`` means a linear input."""
    if not kernel_size:
        g, s, _ = gram(x)
    else:
        g, s, _ = gram(x, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    return g, s


def _width(x, kernel_size) -> int:
    return x.shape[-1] if len(kernel_size) == 0 else x.shape[1] * kernel_size[0] * kernel_size[-1]


@gram_op.register_fake
def _(x, kernel_size, stride, padding, dilation):
    d = _width(x, kernel_size)
    return x.new_empty((d, d), dtype=torch.float64), x.new_empty((d,), dtype=torch.float64)


if _csrc.LOADED:

    @torch.library.register_fake("pluginedit::gram")
    def _gram_csrc_fake(x, kernel_size, stride, padding, dilation):
        d = _width(x, kernel_size)
        return x.new_empty((d, d), dtype=torch.float32), x.new_empty((d,), dtype=torch.float32)

    @register("gram", "csrc")
    def gram_csrc(x, kernel_size=None, stride=1, padding=0, dilation=1, chunk=64, **_):
        """fp32 (G [D, D], s [D]) and the row count n; callers widen to float64."""
        if kernel_size is None:
            g, s = torch.ops.pluginedit.gram(x, [], [], [], [])
            return g, s, x.reshape(-1, x.shape[-1]).shape[0]
        g, s = torch.ops.pluginedit.gram(
            x, _ints(kernel_size, 1), _ints(stride, 1), _ints(padding, 0), _ints(dilation, 1)
        )
        return g, s, _conv_rows(x, kernel_size, stride, padding, dilation)[0]


if _csrc.TRITON:
    from ..triton_kernels import gram as triton_gram

    @register("gram", "triton")
    def gram_triton(x, kernel_size=None, stride=1, padding=0, dilation=1, chunk=64, **kwargs):
        """fp32 (G [D, D], s [D]) and n; kwargs: precision= ('tf32x3' default), out=, splits=."""
        return triton_gram.gram(x, kernel_size, stride, padding, dilation, chunk, **kwargs)
