"""Kernel dispatch: one name per statistics op, several backends.

``auto`` picks Triton for CUDA tensors, else the compiled csrc op if it is loaded, else the
plain-PyTorch reference. ``PLUGINEDIT_BACKEND=torch|triton|csrc`` (or ``backend=`` on a call)
forces one; forcing a backend that cannot run is an error, never a silent fallback.
"""

from __future__ import annotations

# One module per op: each registers its backends (torch always; csrc, triton where present).
from . import (  # noqa: F401
    channel_moments,
    class_maps,
    class_moments,
    gram,
    reference,  # noqa: F401  (every reference in one namespace)
)
from .dispatch import BACKENDS, ENV, available, call, register, resolve

__all__ = ["BACKENDS", "ENV", "available", "call", "register", "resolve", "reference"]
