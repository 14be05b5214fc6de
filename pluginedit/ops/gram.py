"""``gram`` (K3): the Gram of a linear layer's input rows or of a conv's unfolded patches (Gram).

The whole op in one file: the contract (``gram``, the plain-PyTorch reference), the torch.library
op ``pluginedit::gram`` (``_kernel``: Triton on CUDA tensors, else the reference; the C++ kernel of
csrc/gram.cpp registers with it) and the implementations ``backend=`` can force."""

from __future__ import annotations

import torch

from . import _csrc
from .dispatch import define, register

if _csrc.TRITON:
    from ..triton_kernels import gram as triton_gram


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
    (conv, groups=1). Returns (G [D, D] = sum p p^T, s [D] = sum p, n = number of rows), G and s
    float64 on x's device. Conv patches are built ``chunk`` samples at a time so the full unfold
    never exists at once.

    The contract of every backend: fresh float64 (G, s) per call (accumulating across batches is
    the statistic's job). The compiled kernels multiply one call's rows in fp32 (C++: fp32 GEMM;
    Triton: fp32 accumulators, tf32x3 tensor-core products by default) and widen the result;
    this reference multiplies in float64.
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


def _width(x: torch.Tensor, kernel_size: list[int]) -> int:
    return x.shape[-1] if len(kernel_size) == 0 else x.shape[1] * kernel_size[0] * kernel_size[-1]


def _kernel(
    x: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's Python kernel (and fake): Triton on CUDA tensors where triton is installed, the
    reference elsewhere; ``kernel_size=[]`` means a linear input [..., D]. (G, s) in float64."""
    conv = (tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    if x.is_cuda and _csrc.TRITON:
        g, s, _ = triton_gram.gram(x, *conv) if kernel_size else triton_gram.gram(x)
    else:
        g, s, _ = gram(x, *conv) if kernel_size else gram(x)
    return g, s


OP = define("gram", _kernel)


@register("gram", "auto")
@register("gram", "csrc")
def gram_op(x, kernel_size=None, stride=1, padding=0, dilation=1, chunk=64):
    """The torch.library op (``csrc``: forced where the extension registered a kernel), with
    the row count n from shapes."""
    if kernel_size is None:
        g, s = OP(x, [], [], [], [])
        return g, s, x.reshape(-1, x.shape[-1]).shape[0]
    g, s = OP(x, _ints(kernel_size, 1), _ints(stride, 1), _ints(padding, 0), _ints(dilation, 1))
    return g, s, _conv_rows(x, kernel_size, stride, padding, dilation)[0]


if _csrc.TRITON:

    @register("gram", "triton")
    def gram_triton(x, kernel_size=None, stride=1, padding=0, dilation=1, chunk=64, **kwargs):
        """The Triton launcher; kwargs: precision= ('tf32x3' default), splits=, block sizes."""
        return triton_gram.gram(x, kernel_size, stride, padding, dilation, chunk, **kwargs)
