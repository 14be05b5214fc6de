"""Triton kernels, one family per file; the plain-PyTorch reference of each sits beside the op
that dispatches to it (``pluginedit.ops.<op>``; all of them in ``pluginedit.ops.reference``).

Imported as ``pluginedit.triton_kernels.<family>`` (this folder is mapped under the package; a
top-level ``triton_kernels`` module is never installed). Importing a family needs triton; set
``TRITON_INTERPRET=1`` before the import to run the kernels on the CPU (tests do).
"""

import os


def interpreting() -> bool:
    """True when triton runs kernels through its CPU interpreter (no autotuning, explicit blocks,
    and half-precision loads are upcast to fp32 because the interpreter computes bf16 wrongly)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
