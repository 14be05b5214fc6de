"""Registers the Triton kernels with the dispatch when triton imports (optional).

``auto`` only picks these for CUDA tensors; forcing ``backend="triton"`` on CPU tensors runs them
through the interpreter, which needs ``TRITON_INTERPRET=1`` set before triton is imported (that
is how CI tests them).
"""
from __future__ import annotations

try:
    import triton  # noqa: F401
except ImportError:  # triton is optional: the torch/csrc backends cover everything
    triton = None

if triton is not None:
    from . import register
    from ..triton_kernels import class_moments as _k2
    from ..triton_kernels import gram as _k3

    @register("class_moments", "triton")
    def class_moments(x, labels, num_classes, gamma=1.0, shift=None, **kwargs):
        """float64 (counts [K], sums [K, C, 6]); kwargs: deterministic=, state=, block sizes."""
        return _k2.class_moments(x, labels, num_classes, gamma, shift, **kwargs)

    @register("gram", "triton")
    def gram(x, kernel_size=None, stride=1, padding=0, dilation=1, chunk=64, **kwargs):
        """fp32 (G [D, D], s [D]) and n; kwargs: precision= ('tf32x3' default), out=, splits=."""
        return _k3.gram(x, kernel_size, stride, padding, dilation, chunk, **kwargs)
