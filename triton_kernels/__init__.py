"""Triton kernels, one family per file; they import nothing from the package. The plain-PyTorch
reference of each, its contract, and the torch.library op that launches it sit in
``pluginedit.ops.<op>``.

Imported as ``pluginedit.triton_kernels.<family>`` (this folder is mapped under the package; a
top-level ``triton_kernels`` module is never installed). Importing a family needs triton; set
``TRITON_INTERPRET=1`` before the import to run the kernels on the CPU (tests do).
"""

import os
from typing import NamedTuple


def interpreting() -> bool:
    """True when triton runs kernels through its CPU interpreter (no autotuning, explicit blocks,
    and half-precision loads are upcast to fp32 because the interpreter computes bf16 wrongly)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def jit(kernel):
    """``kernel`` as launched inside the ops' ``torch.library.triton_op``: through
    ``torch.library.wrap_triton`` so torch.compile sees it; as is under the interpreter (whose
    kernels wrap_triton does not accept) or on a torch without wrap_triton."""
    import torch

    if interpreting() or not hasattr(torch.library, "wrap_triton"):
        return kernel
    return torch.library.wrap_triton(kernel)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class KernelConfig(NamedTuple):
    """One compiled variant a launcher can pick: the kernel, its argument types (triton signature
    strings, ``"constexpr"`` for compile-time arguments), the constexpr values and the launch
    options. ``default`` marks the variants the default arguments pick on common shapes: the ones
    that must compile without register spills (tests/ops/test_gpu_readiness.py)."""

    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    default: bool


def signature(fn, types: dict, constexprs: dict) -> dict:
    """Triton signature of ``fn``: ``types`` by argument name, ``"constexpr"`` for the names in
    ``constexprs`` and ``"i32"`` for every other (integer) argument."""
    return {a: "constexpr" if a in constexprs else types.get(a, "i32") for a in fn.arg_names}


DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16", "fp64": "*fp64"}
