"""``python -m pluginedit.ops``: the table of statistics ops x backends (reference, C++, CUDA,
Triton): ``active`` where ``auto`` dispatch would run it on a tensor of that device here,
``available`` where it can be forced (``backend=`` / ``PLUGINEDIT_BACKEND``), ``-`` where this op
has no such kernel, and why not otherwise."""

from __future__ import annotations

import torch

from . import _csrc
from .dispatch import _ops, available, resolve

COLUMNS = ("reference", "C++", "CUDA", "Triton")


def _cell(op: str, column: str) -> str:
    impls = _ops[op]
    cuda = torch.cuda.is_available()
    cpu_auto = resolve(op, torch.zeros(2, 3))[0]
    if column == "reference":
        return "active (CPU)" if cpu_auto == "torch" else "available"
    if column == "C++":
        if "csrc" not in impls:
            return "-"
        if "csrc" not in available(op, "cpu"):
            return "not built" if not _csrc.LOADED else "- (no C++ kernel)"
        return "active (CPU)" if cpu_auto == "csrc" else "available"
    if column == "CUDA":
        if op not in _csrc.CUDA_OPS:
            return "-"
        if not _csrc.compiled_kernel(op, "CUDA"):
            return "not built (PLUGINEDIT_BUILD_EXT=cuda)"
        return "active (CUDA)" if cuda else "built, no GPU"
    if "triton" not in impls:
        return "-"
    if not cuda:
        return "installed, no GPU"
    return "available" if _csrc.compiled_kernel(op, "CUDA") else "active (CUDA)"


def table() -> str:
    ops = sorted(_ops)
    rows = [("op", *COLUMNS)] + [(op, *(_cell(op, c) for c in COLUMNS)) for op in ops]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) + 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join([_csrc.summary(), *lines])


if __name__ == "__main__":
    print(table())
