"""Statistics ops: one torch.library op per statistic (``torch.ops.pluginedit.<op>``), each in
``pluginedit/ops/<op>.py`` with its plain-PyTorch reference, which is its contract.

``auto`` is the op's own dispatch: the compiled csrc kernel registered for the tensor's device,
else Triton on CUDA, else the reference. ``PLUGINEDIT_BACKEND=torch|triton|csrc`` (or
``backend=`` on a call) forces one implementation; forcing a backend that cannot run is an error,
never a silent fallback. ``python -m pluginedit.ops`` prints the table.
"""

from __future__ import annotations

# One module per op: each defines its op (schema, Python kernel, fake) and its backends.
from . import (  # noqa: F401
    _csrc,
    channel_moments,
    class_maps,
    class_moments,
    gram,
    reference,  # noqa: F401  (every reference in one namespace)
)
from .dispatch import BACKENDS, ENV, auto_backend, available, call, register, resolve

# After the ops are defined: the extension's TORCH_LIBRARY_IMPL kernels attach to them.
_csrc.load()
_csrc.announce()

__all__ = [
    "BACKENDS",
    "ENV",
    "auto_backend",
    "available",
    "call",
    "register",
    "resolve",
    "reference",
]
