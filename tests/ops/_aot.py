"""Ahead-of-time compilation of Triton kernels for a GPU this machine does not have.

``triton.compile`` with an explicit ``GPUTarget`` runs the whole pipeline (TTIR, TTGIR, LLVM, PTX,
and ``ptxas`` from the triton wheel to a cubin) without a driver. The register count and the
stack frame of the cubin come from ``cuobjdump --dump-resource-usage`` (also in the wheel): a
Triton kernel has no stack frame unless registers spilled or an array fell back to local memory,
so STACK > 0 is the failure the readiness test looks for."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

ARCHS = {"sm_90": 90, "sm_80": 80}


@dataclass
class Usage:
    regs: int
    stack: int  # bytes of stack frame per thread: spills and local-memory arrays
    local: int
    shared: int


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def available() -> str | None:
    """None when AOT compilation can run here, else why not."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as e:
        return f"triton's AOT API is not importable ({e})"
    for tool in ("ptxas", "cuobjdump"):
        if not os.access(_tool(tool), os.X_OK):
            return f"{tool} is not in the triton wheel"
    return None


def compile_usage(cfg, capability: int) -> Usage:
    """Compile one ``KernelConfig`` (triton_kernels.KernelConfig) for sm_<capability> and read
    its resource usage from the cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(cfg.fn, dict(cfg.signature), dict(cfg.constexprs))
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    k = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=opts)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        out = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    fields = dict(re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", out))
    return Usage(int(fields["REG"]), int(fields["STACK"]), int(fields["LOCAL"]), k.metadata.shared)
