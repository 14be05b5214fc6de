"""COAR's batched masked forwards (ALGORITHMS.md 5.1-5.2, S4): many component-ablation masks per
forward pass. The batch is replicated along a mask axis and each component layer's output channel
c of replica r is replaced by what zeroing that channel's weight slice would give (the bias, or
0 without one): out * keep + bias * (1 - keep), before any BatchNorm. No model copy per mask.

Masks are Bernoulli(1 - alpha) keep-masks drawn from a generator seeded by (seed, index), so any
mask can be regenerated from its index and masks never need to be stored."""
from __future__ import annotations

import torch
from torch import nn

from ..core.components import get_module, size_of
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
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise InputError(f"COAR components are conv filters and linear rows; {p!r} is {type(module).__name__}")
        out.append((p, start, size_of(module)))
        start += size_of(module)
    return out


def _mask_hook(keep: torch.Tensor, n: int):
    """keep [M, C] for one layer; the output batch is [M * n, C, ...]."""
    def hook(module, inputs, out):
        k = keep.to(out.device, out.dtype).repeat_interleave(n, 0)          # [M*n, C]
        shape = (k.shape[0], k.shape[1]) + (1,) * (out.ndim - 2) if isinstance(module, nn.Conv2d) \
            else (k.shape[0],) + (1,) * (out.ndim - 2) + (k.shape[1],)
        k = k.reshape(shape)
        bias = module.bias
        if bias is None:
            return out * k
        b = bias.reshape((1, -1) + (1,) * (out.ndim - 2)) if isinstance(module, nn.Conv2d) else bias
        return out * k + b * (1 - k)
    return hook


@torch.no_grad()
def masked_outputs(model: nn.Module, x: torch.Tensor, slices, masks: torch.Tensor) -> torch.Tensor:
    """The model's outputs [M, n, classes] on the ``n`` inputs ``x`` under each of the ``M`` keep
    masks [M, C] (C = total components of ``slices``), in one forward pass."""
    m, n = masks.shape[0], x.shape[0]
    handles = [get_module(model, p).register_forward_hook(_mask_hook(masks[:, s:s + w], n))
               for p, s, w in slices]
    try:
        out = output(model, x.repeat((m,) + (1,) * (x.ndim - 1)))
    finally:
        for h in handles:
            h.remove()
    return out.reshape(m, n, -1)


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct-class margin: logit of the true class minus the largest other logit [..., n]."""
    true = logits.gather(-1, y.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    other = logits.scatter(-1, y.expand(logits.shape[:-1]).unsqueeze(-1), float("-inf")).amax(-1)
    return true - other
