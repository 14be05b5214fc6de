"""Registers the compiled csrc ops with the dispatch when the extension is built (optional).

``pluginedit._C`` (built by setup.py from csrc/) defines ``torch.ops.pluginedit.class_moments``
and ``torch.ops.pluginedit.gram`` with CPU (and, in a CUDA build, CUDA) kernels. Here we add the
fake (meta) implementations so torch.compile can trace them, and the dispatch wrappers. If the
extension is absent, one warning is issued and the other backends carry on.
"""
from __future__ import annotations

import warnings

import torch

try:
    from .. import _C  # noqa: F401  (loading the library runs the TORCH_LIBRARY registrations)
    LOADED = True
except ImportError as e:  # never required
    LOADED = False
    warnings.warn(f"pluginedit: compiled ops not loaded ({e}); using the PyTorch/Triton backends. "
                  "Build them with `pip install --no-build-isolation -e .`", RuntimeWarning, stacklevel=2)


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


if LOADED:
    from . import register

    @torch.library.register_fake("pluginedit::class_moments")
    def _class_moments_fake(x, labels, num_classes, gamma=1.0, shift=None):
        return (x.new_empty((num_classes,), dtype=torch.float64),
                x.new_empty((num_classes, x.shape[1], 6), dtype=torch.float64))

    @torch.library.register_fake("pluginedit::gram")
    def _gram_fake(x, kernel_size, stride, padding, dilation):
        d = x.shape[-1] if len(kernel_size) == 0 else x.shape[1] * kernel_size[0] * kernel_size[-1]
        return x.new_empty((d, d), dtype=torch.float32), x.new_empty((d,), dtype=torch.float32)

    @register("class_moments", "csrc")
    def class_moments(x, labels, num_classes, gamma=1.0, shift=None):
        """float64 (counts [K], sums [K, C, 6]); deterministic for any thread count."""
        return torch.ops.pluginedit.class_moments(x, labels, int(num_classes), float(gamma), shift)

    @register("gram", "csrc")
    def gram(x, kernel_size=None, stride=1, padding=0, dilation=1, chunk=64, **_):
        """fp32 (G [D, D], s [D]) and the row count n; callers widen to float64."""
        if kernel_size is None:
            g, s = torch.ops.pluginedit.gram(x, [], [], [], [])
            return g, s, x.reshape(-1, x.shape[-1]).shape[0]
        g, s = torch.ops.pluginedit.gram(x, _ints(kernel_size, 1), _ints(stride, 1),
                                         _ints(padding, 0), _ints(dilation, 1))
        return g, s, _conv_rows(x, kernel_size, stride, padding, dilation)[0]
