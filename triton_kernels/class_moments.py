"""K2: per-class power sums of witness features, reading the activation tensor once.

Per sample n and channel c: s = sum over space of x[n, c] (minus shift[c]), r = ||x[n, c]||_F,
e = exp(-gamma r); features (s, s^2, s^3, s^4, e, e^2) summed per class into a [K, C, 6] state.

Two kernels:
* ``_moments_kernel`` - one program per (sample, block of channels) streams over space with fp32
  tile accumulators (summed once at the end, a tree reduction, so long maps keep fp32 accuracy),
  then forms the features in fp64 (s^4 of a spatial sum overflows fp32 range and loses digits).
  Deterministic mode writes per-sample partials [N, C, 6]; the atomic fast path adds them straight
  into the state with fp64 atomics (order-dependent rounding, so not bitwise reproducible).
* ``_combine_kernel`` - one program per (class, block of channels) walks that class's samples in
  a fixed (stable-sorted) order and adds their partials into the result: deterministic.

Memory layout: any strides. NCHW and channels_last are both read in place through the
[N, C, L] view (for channels_last the view has stride 1 along C; the tile then reads along C).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import DTYPES, KernelConfig, interpreting, jit, next_pow2, signature

P = 6  # number of witness features


@triton.jit
def _moments_kernel(
    x_ptr,
    out_ptr,
    labels_ptr,
    shift_ptr,
    C,
    L,
    sxn,
    sxc,
    sxl,
    gamma,
    HAS_SHIFT: tl.constexpr,
    ATOMIC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    base = x_ptr + n * sxn + offs_c.to(tl.int64)[:, None] * sxc
    acc_s = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
    acc_q = tl.zeros([BLOCK_C, BLOCK_L], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        m = cmask[:, None] & (offs_l[None, :] < L)
        # Upcast right after the load: fp32 math for every input dtype.
        v = tl.load(base + offs_l.to(tl.int64)[None, :] * sxl, mask=m, other=0.0).to(tl.float32)
        acc_s += v
        acc_q += v * v
    s32 = tl.sum(acc_s, axis=1)
    r = tl.sqrt(tl.sum(acc_q, axis=1))
    e = tl.exp(-gamma * r).to(tl.float64)
    s = s32.to(tl.float64)
    if HAS_SHIFT:
        s -= tl.load(shift_ptr + offs_c, mask=cmask, other=0.0)
    s2 = s * s
    feats = (s, s2, s2 * s, s2 * s2, e, e * e)
    if ATOMIC:
        lab = tl.load(labels_ptr + n)
        row = out_ptr + (lab * C + offs_c) * 6
        for p in tl.static_range(6):
            tl.atomic_add(row + p, feats[p], mask=cmask)
    else:
        row = out_ptr + (n * C + offs_c) * 6
        for p in tl.static_range(6):
            tl.store(row + p, feats[p], mask=cmask)


@triton.jit
def _combine_kernel(
    part_ptr, state_ptr, order_ptr, offsets_ptr, C, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr
):
    k = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = tl.arange(0, BLOCK_P)
    m = (offs_c[:, None] < C) & (offs_p[None, :] < 6)
    cp = offs_c[:, None] * 6 + offs_p[None, :]
    start = tl.load(offsets_ptr + k)
    end = tl.load(offsets_ptr + k + 1)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float64)
    for i in range(start, end):
        n = tl.load(order_ptr + i)
        acc += tl.load(part_ptr + n * C * 6 + cp, mask=m, other=0.0)
    dst = state_ptr + k * C * 6 + cp
    tl.store(dst, tl.load(dst, mask=m, other=0.0) + acc, mask=m)


# Compiled tiles [BLOCK_C, BLOCK_L] of 4096 elements on 4 warps (32 per thread and accumulator):
# for maps read along space (NCHW rows) the long side is L, by map size; for channels_last
# (stride 1 along C) the long side is C, so each warp reads 128 contiguous channels.
ROW_TILES = ((256, 16), (64, 64), (16, 256))  # (BLOCK_C, BLOCK_L) for L <= 16, <= 64, longer
CHANNELS_LAST_TILE = (128, 32)
COMBINE_BLOCK_C = 64
NUM_WARPS = 4


def _blocks(c: int, length: int, channels_last: bool) -> tuple[int, int]:
    if interpreting():  # few, large programs: the interpreter pays ~1 ms per program per step
        bl = min(next_pow2(length), 1024)
        return min(next_pow2(c), max(1, 8192 // bl)), bl
    if channels_last:
        return CHANNELS_LAST_TILE
    return ROW_TILES[0] if length <= 16 else ROW_TILES[1] if length <= 64 else ROW_TILES[2]


def class_moments(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    gamma: float = 1.0,
    shift: torch.Tensor | None = None,
    *,
    deterministic: bool = True,
    block_c: int | None = None,
    block_l: int | None = None,
):
    """The contract of ``pluginedit.ops.class_moments.class_moments``: float64 (counts [K],
    sums [K, C, 6]). ``deterministic=False`` uses fp64 atomics instead of per-sample partials
    plus a per-class combine."""
    n, c, k = x.shape[0], x.shape[1], int(num_classes)
    # a view for NCHW and channels_last; other layouts may copy
    v = x.reshape(n, c, math.prod(x.shape[2:]))
    dev = x.device
    state = torch.zeros(k, c, P, dtype=torch.float64, device=dev)
    labels = labels.to(device=dev, dtype=torch.int64).contiguous()
    counts = _counts(labels, k)
    if n == 0 or c == 0:
        return counts, state
    bc, bl = _blocks(c, v.shape[2], v.stride(1) == 1 and v.stride(2) != 1 and c > 1)
    bc, bl = block_c or bc, block_l or bl
    # the state is a dummy pointer when HAS_SHIFT is off
    shift_t = shift.to(device=dev, dtype=torch.float64).contiguous() if shift is not None else state
    if not deterministic:
        _moments(v, state, labels, shift_t, gamma, shift is not None, True, bc, bl)
        return counts, state
    part = torch.empty(n, c, P, dtype=torch.float64, device=dev)
    _moments(v, part, labels, shift_t, gamma, shift is not None, False, bc, bl)
    _combine(part, state, labels, counts, k)
    return counts, state


def _counts(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Samples per class, float64 [K] (a scatter, not bincount: its size never depends on the
    values, so the op traces under torch.compile)."""
    ones = torch.ones(labels.shape[0], dtype=torch.float64, device=labels.device)
    return torch.zeros(k, dtype=torch.float64, device=labels.device).index_add_(0, labels, ones)


def _moments(v, out, labels, shift_t, gamma, has_shift: bool, atomic: bool, bc: int, bl: int):
    """One ``_moments_kernel`` launch over the [N, C, L] view ``v``: per-sample partials into
    ``out`` [N, C, 6], or with ``atomic`` straight into the state ``out`` [K, C, 6]."""
    n, c, length = v.shape
    jit(_moments_kernel)[(n, triton.cdiv(c, bc))](
        v,
        out,
        labels,
        shift_t,
        c,
        length,
        v.stride(0),
        v.stride(1),
        v.stride(2),
        float(gamma),
        HAS_SHIFT=has_shift,
        ATOMIC=atomic,
        BLOCK_C=bc,
        BLOCK_L=bl,
        num_warps=NUM_WARPS,
    )


def _combine(part, state, labels, counts, k: int) -> None:
    """Adds the per-sample partials [N, C, 6] into the state [K, C, 6], class by class, each
    class's samples in a fixed (stable-sorted) order: deterministic."""
    c = part.shape[1]
    order = torch.argsort(labels, stable=True)
    offsets = torch.zeros(k + 1, dtype=torch.int64, device=part.device)
    offsets[1:] = torch.cumsum(counts.to(torch.int64), 0)
    bcc = min(next_pow2(c), 1024) if interpreting() else COMBINE_BLOCK_C
    jit(_combine_kernel)[(k, triton.cdiv(c, bcc))](
        part, state, order, offsets, c, BLOCK_C=bcc, BLOCK_P=8
    )


def aot_configs() -> list[KernelConfig]:
    """Every compiled variant ``class_moments`` can launch: each tile, input dtype, with and
    without shift, deterministic or atomic, and the combine kernel. ``default``: what the
    statistics (``ClassMoments``: a shift, deterministic) launch on fp32/bf16/fp16."""
    out = []
    ptrs = {"out_ptr": "*fp64", "labels_ptr": "*i64", "shift_ptr": "*fp64", "gamma": "fp32"}
    for dtype, ptr in DTYPES.items():
        for (bc, bl), shift, atomic in (
            (t, h, a)
            for t in (*ROW_TILES, CHANNELS_LAST_TILE)
            for h in (True, False)
            for a in (False, True)
        ):
            const = dict(HAS_SHIFT=shift, ATOMIC=atomic, BLOCK_C=bc, BLOCK_L=bl)
            out.append(
                KernelConfig(
                    f"class_moments {dtype} {bc}x{bl} shift={shift} atomic={atomic}",
                    _moments_kernel,
                    signature(_moments_kernel, {**ptrs, "x_ptr": ptr}, const),
                    const,
                    NUM_WARPS,
                    3,
                    shift and not atomic and dtype != "fp64",
                )
            )
    const = dict(BLOCK_C=COMBINE_BLOCK_C, BLOCK_P=8)
    types = {"part_ptr": "*fp64", "state_ptr": "*fp64", "order_ptr": "*i64", "offsets_ptr": "*i64"}
    sig = signature(_combine_kernel, types, const)
    out.append(KernelConfig("class_moments combine", _combine_kernel, sig, const, 4, 3, True))
    return out
