"""K3: Gram matrix G = sum p p^T and column sum s = sum p over the rows p of a linear input
[M, D], or over the im2col patch rows of a conv input [N, C, H, W] gathered on the fly (implicit
im2col: no unfold buffer; patch order (c, kh, kw) as F.unfold and conv weights; stride, padding,
dilation; groups=1).

Grid: (upper-triangle tile pairs (i <= j), splits of the long M axis). Each program accumulates
one [BLOCK_D, BLOCK_D] tile over its M range with fp32 ``tl.dot`` and adds it into the persistent
fp32 accumulator with atomics (split-K; with one split the result is deterministic). Diagonal
tiles also accumulate the column sum (the mean vector for centring). The lower triangle is
mirrored on the host at the end.

Precision (fp32 inputs only; fp16/bf16 products are exact in fp32 anyway): ``"ieee"`` (exact
fp32 FMA), ``"tf32x3"`` (three tf32 tensor-core passes, ~fp32 accurate; the default), or
``"tf32"`` (fast, ~1e-3 relative - opt in only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import DTYPES, KernelConfig, interpreting, jit, next_pow2, signature

PRECISIONS = ("tf32", "tf32x3", "ieee")
# Compiled tiles: [BLOCK_M, BLOCK_D] operand tiles, 8 warps for 64-wide tiles. The earlier
# 64 x 64 tiles on 4 warps needed 255 registers and spilled 1.5 KB per thread for a 3x3 conv in
# tf32x3 on sm_90 (the gathered im2col pointers and masks of two tiles plus the split operands);
# BLOCK_M = 32 on 8 warps compiles to ~210 registers and no spill, and split-K over M keeps the
# device full. Checked ahead of time by tests/ops/test_gpu_readiness.py.
BLOCK_M = 32
NUM_STAGES = 3


def _tiles(d: int, precision: str = "tf32x3") -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the compiled kernel for a Gram of width d (d = 64 and d = 32 pick
    the two variants). The exact ``ieee`` products (fp32 opt-in, every fp64 input) run on FMA
    units, not tensor cores: their 64-wide tiles need 255 registers and spill on sm_80 (so do
    32-wide tiles on 4 warps for fp32 conv inputs), so they always take 32-wide tiles on 8 warps."""
    if precision == "ieee":
        return 32, 8
    return (64, 8) if d > 32 else (32, 4)


def _variant(dtype: str, precision: str) -> tuple[bool, str]:
    """(UPCAST, PRECISION) the launcher compiles for an input dtype and a requested precision:
    fp32/fp64 inputs are read as fp32 (fp64 always at ieee); fp16/bf16 products are exact in
    fp32, so they take the tensor-core path whatever precision was asked."""
    if dtype == "fp64":
        return True, "ieee"
    if dtype == "fp32":
        return True, precision
    return False, "tf32"


@triton.jit
def _patch_rows(offs_m, M, Ho, Wo, SH, SW, PH, PW, sx0, IS_CONV: tl.constexpr):
    """Per row m of a tile: the offset of its sample (the linear row, or the image n of the conv
    patch row), the input position (h, w) of its patch's top-left entry (conv only; negative in
    the padding) and whether m < M."""
    m64 = offs_m.to(tl.int64)
    if IS_CONV:
        off = (m64 // (Ho * Wo)) * sx0
        h = ((m64 // Wo) % Ho) * SH - PH
        w = (m64 % Wo) * SW - PW
    else:
        off = m64 * sx0
        h = m64  # unused: a linear row has no position
        w = m64
    return off, h, w, offs_m < M


@triton.jit
def _patch_cols(offs_d, D, KH, KW, DH, DW, sx1, IS_CONV: tl.constexpr):
    """Per column d of a tile: the offset of its channel (the linear feature, or the channel c of
    the patch entry (c, kh, kw)), the entry's position in the patch, (kh * DH, kw * DW) (conv
    only), and whether d < D."""
    if IS_CONV:
        off = (offs_d // (KH * KW)).to(tl.int64) * sx1
        h = ((offs_d // KW) % KH) * DH
        w = (offs_d % KW) * DW
    else:
        off = offs_d.to(tl.int64) * sx1
        h = offs_d  # unused: a linear feature has no position
        w = offs_d
    return off, h, w, offs_d < D


@triton.jit
def _load_tile(
    x_ptr,
    row,
    row_h,
    row_w,
    row_ok,
    col,
    col_h,
    col_w,
    col_ok,
    H,
    W,
    sx2,
    sx3,
    IS_CONV: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Tile [BLOCK_M, BLOCK_D] of the row matrix from its rows (``_patch_rows``) and columns
    (``_patch_cols``); padding and out-of-range entries read as 0."""
    valid = row_ok[:, None] & col_ok[None, :]
    ptr = x_ptr + row[:, None] + col[None, :]
    if IS_CONV:
        h = row_h[:, None] + col_h[None, :]
        w = row_w[:, None] + col_w[None, :]
        valid = valid & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        ptr = ptr + h * sx2 + w * sx3
    v = tl.load(ptr, mask=valid, other=0.0)
    if UPCAST:
        v = v.to(tl.float32)
    return v


@triton.jit
def _gram_kernel(
    x_ptr,
    g_ptr,
    s_ptr,
    ti_ptr,
    tj_ptr,
    M,
    D,
    rows_per_split,
    C,
    H,
    W,
    Ho,
    Wo,
    KH,
    KW,
    SH,
    SW,
    PH,
    PW,
    DH,
    DW,
    sx0,
    sx1,
    sx2,
    sx3,
    IS_CONV: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    ti = tl.load(ti_ptr + t)
    tj = tl.load(tj_ptr + t)
    offs_i = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    # the columns of tiles i and j: channel offset, position in the patch, in range
    ci, hi, wi, oki = _patch_cols(offs_i, D, KH, KW, DH, DW, sx1, IS_CONV)
    cj, hj, wj, okj = _patch_cols(offs_j, D, KH, KW, DH, DW, sx1, IS_CONV)
    m_start = tl.program_id(1) * rows_per_split
    m_end = tl.minimum(m_start + rows_per_split, M)
    acc = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    acc_s = tl.zeros([BLOCK_D], dtype=tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        rm, hm, wm, okm = _patch_rows(offs_m, m_end, Ho, Wo, SH, SW, PH, PW, sx0, IS_CONV)
        a = _load_tile(x_ptr, rm, hm, wm, okm, ci, hi, wi, oki, H, W, sx2, sx3, IS_CONV, UPCAST)
        b = _load_tile(x_ptr, rm, hm, wm, okm, cj, hj, wj, okj, H, W, sx2, sx3, IS_CONV, UPCAST)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=PRECISION)
        if ti == tj:
            acc_s += tl.sum(a.to(tl.float32), axis=0)
    mask = (offs_i[:, None] < D) & (offs_j[None, :] < D)
    tl.atomic_add(g_ptr + offs_i[:, None] * D + offs_j[None, :], acc, mask=mask)
    if ti == tj:
        tl.atomic_add(s_ptr + offs_i, acc_s, mask=offs_i < D)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def gram(
    x: torch.Tensor,
    kernel_size=None,
    stride=1,
    padding=0,
    dilation=1,
    chunk: int = 64,
    *,
    precision: str = "tf32x3",
    splits: int | None = None,
    block_m: int | None = None,
    block_d: int | None = None,
):
    """The contract of ``pluginedit.ops.gram.gram``: float64 (G, s) and the row count n; the
    products are summed in fp32 (``precision``) and widened at the end. ``chunk`` is accepted
    for signature parity and ignored (nothing is materialised)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dev = x.device
    v, m, d, geo, strides = _row_matrix(x, kernel_size, stride, padding, dilation)
    g = torch.zeros(d, d, dtype=torch.float32, device=dev)
    s = torch.zeros(d, dtype=torch.float32, device=dev)
    if m > 0 and d > 0:
        is_conv = kernel_size is not None
        _launch(v, g, s, m, d, geo, strides, is_conv, precision, splits, block_m, block_d)
    full = torch.triu(g) + torch.triu(g, 1).T  # the kernel fills the upper triangle
    return full.double(), s.double(), m


def _row_matrix(x: torch.Tensor, kernel_size, stride, padding, dilation):
    """(the tensor the kernel reads, its rows m, its width d, the conv geometry (C, H, W, Ho, Wo,
    KH, KW, SH, SW, PH, PW, DH, DW), the kernel's four strides) of a linear input (any leading
    dims; ``kernel_size`` None) or of the patch rows of a conv input [N, C, H, W]."""
    if kernel_size is None:
        v = x.reshape(-1, x.shape[-1])
        m, d = v.shape
        geo = (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
        return v, m, d, geo, (v.stride(0), v.stride(1), 0, 0)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, padding, dilation))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    m, d = n * max(ho, 0) * max(wo, 0), c * kh * kw
    geo = (c, h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw)
    return x, m, d, geo, tuple(x.stride())


def _launch(
    v,
    g,
    s,
    m: int,
    d: int,
    geo,
    strides,
    is_conv: bool,
    precision: str,
    splits: int | None,
    block_m: int | None,
    block_d: int | None,
) -> None:
    """Adds the upper triangle of the Gram matrix of ``v``'s m rows into ``g`` and their column
    sum into ``s``; the tile sizes and the splits of the M axis are chosen here unless given."""
    dev = v.device
    interp = interpreting()
    dtype = {torch.float32: "fp32", torch.float64: "fp64"}.get(v.dtype, "half")
    upcast, precision = _variant(dtype, precision)
    upcast = upcast or interp  # the interpreter computes bf16 wrongly: fp32 there
    bd, warps = _tiles(d, precision)
    bm = BLOCK_M
    if interp:  # few, large programs: the interpreter pays per program, not per register
        bd, bm = min(max(next_pow2(d), 16), 64), min(max(next_pow2(m), 16), 512)
    bd, bm = block_d or bd, block_m or bm
    nt = triton.cdiv(d, bd)
    ti, tj = torch.triu_indices(nt, nt, device=dev).to(torch.int32)
    if splits is None:  # enough programs to fill the device; one split under the interpreter
        sms = (
            1
            if interp or dev.type != "cuda"
            else torch.cuda.get_device_properties(dev).multi_processor_count
        )
        splits = max(1, min(triton.cdiv(m, bm * 4), triton.cdiv(4 * sms, ti.numel())))
    rows = triton.cdiv(triton.cdiv(m, splits), bm) * bm
    splits = triton.cdiv(m, rows)
    jit(_gram_kernel)[(ti.numel(), splits)](
        v,
        g,
        s,
        ti,
        tj,
        m,
        d,
        rows,
        *geo,
        *strides,
        IS_CONV=is_conv,
        UPCAST=upcast,
        PRECISION=precision,
        BLOCK_M=bm,
        BLOCK_D=bd,
        num_warps=warps,
        num_stages=NUM_STAGES,
    )


def aot_configs() -> list[KernelConfig]:
    """Every compiled variant ``gram`` can launch with its default tiles: conv or linear, each
    input dtype, each precision an fp32 input may ask for, both tile widths. ``default``: the
    default precision (tf32x3 for fp32)."""
    out = []
    types = {"g_ptr": "*fp32", "s_ptr": "*fp32", "ti_ptr": "*i32", "tj_ptr": "*i32"}
    for dtype, ptr in DTYPES.items():
        precisions = PRECISIONS if dtype == "fp32" else ("tf32x3",)
        for precision, is_conv, d in (
            (p, c, d) for p in precisions for c in (True, False) for d in (64, 32)
        ):
            upcast, prec = _variant(dtype, precision)
            bd, warps = _tiles(d, prec)
            const = dict(
                IS_CONV=is_conv, UPCAST=upcast, PRECISION=prec, BLOCK_M=BLOCK_M, BLOCK_D=bd
            )
            name = f"gram {'conv' if is_conv else 'linear'} {dtype} {prec} D{bd} w{warps}"
            if any(c.name == name for c in out):  # ieee takes the 32-wide tile for any d
                continue
            out.append(
                KernelConfig(
                    name,
                    _gram_kernel,
                    signature(_gram_kernel, {**types, "x_ptr": ptr}, const),
                    const,
                    warps,
                    NUM_STAGES,
                    precision == "tf32x3",
                )
            )
    return out
