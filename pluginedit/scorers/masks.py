"""COAR's batched masked forwards (ALGORITHMS.md 5.1-5.2, S4): many component-ablation masks per
forward pass. The batch is replicated along a mask axis and each component layer's output channel
c of replica r is replaced by what zeroing that channel's weight slice would give (the bias, or
0 without one): out * keep + bias * (1 - keep), before any BatchNorm. An attention head (a
BERT-family self-attention block's components) is ablated by zeroing its context vectors, which is
what zeroing the head's value rows and value bias gives (attention weights sum to one). No model
copy per mask.

Masks are Bernoulli(1 - alpha) keep-masks drawn from a generator seeded by (seed, index), so any
mask can be regenerated from its index and masks never need to be stored."""

from __future__ import annotations

import torch
from torch import nn

from ..core.batches import batch_len, repeat_batch
from ..core.components import get_module, is_attention, size_of
from ..core.errors import InputError
from ..core.outputs import output


def keep_masks(seed: int, start: int, count: int, width: int, alpha: float) -> torch.Tensor:
    """Masks ``start`` .. ``start + count`` [count, width] (bool, True = kept); mask i depends only
    on (seed, i)."""
    if not 0.0 <= alpha < 1.0:
        raise InputError(f"alpha (ablated fraction) must lie in [0, 1), got {alpha}")
    rows = []
    for i in range(start, start + count):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        rows.append(torch.rand(width, generator=g) >= alpha)
    return torch.stack(rows) if rows else torch.zeros(0, width, dtype=torch.bool)


def component_slices(model: nn.Module, paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, first component index, width) of each layer in the flat component vector."""
    out, start = [], 0
    for p in paths:
        module = get_module(model, p)
        if not isinstance(module, (nn.Conv2d, nn.Linear)) and not is_attention(module):
            raise InputError(
                f"COAR components are conv filters, linear rows and attention heads; "
                f"{p!r} is {type(module).__name__}"
            )
        out.append((p, start, size_of(module)))
        start += size_of(module)
    return out


def _channel_view(module: nn.Module, out: torch.Tensor, groups: int) -> tuple[torch.Tensor, tuple]:
    """``out`` [groups * n, ...] viewed as [groups, n, ...], and the shape a [groups, C] keep
    tensor takes to broadcast over it (channels on dim 1 for convs, last for linears)."""
    view = out.reshape((groups, -1) + tuple(out.shape[1:]))
    if isinstance(module, nn.Conv2d):
        return view, (groups, 1, -1) + (1,) * (out.ndim - 2)
    return view, (groups,) + (1,) * (out.ndim - 1) + (-1,)


def _head_hook(keep: torch.Tensor):
    """keep [G, H] for one self-attention block whose output (or first output) is the context
    [G * n, T, H * d]: head h of group g is scaled by keep (0 = the head ablated)."""

    def hook(module, inputs, out):
        ctx = out[0] if isinstance(out, tuple) else out
        g, h = keep.shape
        view = ctx.reshape(
            (g, ctx.shape[0] // g) + tuple(ctx.shape[1:-1]) + (h, ctx.shape[-1] // h)
        )
        k = keep.to(ctx.device, ctx.dtype).reshape((g,) + (1,) * (view.ndim - 3) + (h, 1))
        masked = (view * k).reshape(ctx.shape)
        return (masked,) + tuple(out[1:]) if isinstance(out, tuple) else masked

    return hook


def _mask_hook(keep: torch.Tensor):
    """keep [G, C] (float) for one layer, the output batch being G groups of n rows: channel c of
    group g becomes out * keep + bias * (1 - keep). In place when no gradient is recorded: the
    masked forward then costs one extra elementwise pass (no new activation tensor)."""

    def hook(module, inputs, out):
        view, shape = _channel_view(module, out, keep.shape[0])
        k = keep.to(out.device, out.dtype).reshape(shape)
        bias = module.bias
        b = (
            None
            if bias is None
            else (
                bias.reshape((1, 1, -1) + (1,) * (out.ndim - 2))
                if isinstance(module, nn.Conv2d)
                else bias
            )
        )
        if torch.is_grad_enabled():
            masked = view * k if b is None else view * k + b * (1 - k)
        else:
            masked = view.mul_(k) if b is None else view.mul_(k).add_(b * (1 - k))
        return masked.reshape(out.shape)

    return hook


def _hooked(model, slices, keep: torch.Tensor):
    handles = []
    for p, s, w in slices:
        module = get_module(model, p)
        hook = _head_hook if is_attention(module) else _mask_hook
        handles.append(module.register_forward_hook(hook(keep[:, s : s + w])))
    return handles


@torch.no_grad()
def masked_outputs(model: nn.Module, x: torch.Tensor, slices, masks: torch.Tensor) -> torch.Tensor:
    """The model's outputs [M, n, classes] on the ``n`` inputs ``x`` under each of the ``M`` keep
    masks [M, C] (C = total components of ``slices``), in one forward pass."""
    m, n = masks.shape[0], batch_len(x)
    handles = _hooked(model, slices, masks.float())
    try:
        out = output(model, repeat_batch(x, m))
    finally:
        for h in handles:
            h.remove()
    return out.reshape(m, n, -1)


def keep_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, slices, keep: torch.Tensor
) -> torch.Tensor:
    """d margin / d keep [n, C] of each example at its own keep point ``keep`` [n, C] (a mask,
    or all ones): the linearised model's attribution, one backward for the whole batch. At all
    ones it is the gradient x parameter of each weight slice."""
    with torch.enable_grad():  # estimation runs under no_grad; slices need a graph
        k = keep.float().to(y.device).requires_grad_(True)
        handles = _hooked(model, slices, k)  # one group per example
        try:
            (grad,) = torch.autograd.grad(margins(output(model, x), y).sum(), k)
        finally:
            for h in handles:
                h.remove()
    return grad


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct-class margin: logit of the true class minus the largest other logit [..., n]."""
    true = logits.gather(-1, y.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    other = logits.scatter(-1, y.expand(logits.shape[:-1]).unsqueeze(-1), float("-inf")).amax(-1)
    return true - other
