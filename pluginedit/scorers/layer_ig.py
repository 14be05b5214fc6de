"""Attribution-guided layer localisation (ALGORITHMS.md 6.3): layer-wise integrated gradients
from the corrupted input (baseline) to the clean one, and each layer's editability.

M^l = (f_l(x) - f_l(x~)) * mean over alpha of dF / d f_l at x~ + alpha (x - x~), F = the logit
of the label; completeness: sum(M^l) = F(x) - F(x~) for every layer, so layers compare. All
layers' M^l come from the same ``steps`` passes (midpoint rule, batched). Editability
G_l = || sum over pairs and pixels of M^l_{:,p} (C_l^{-1} k~_p)^T ||_F: how much one rank-one
step along the edit direction at layer l can move F."""

from __future__ import annotations

import torch
from torch import nn

from ..core.components import get_module
from ..core.outputs import output
from ..linalg import solve_spd
from .keys import layer_keys


def _flat(out: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """[B, O, L] of a layer output (channels first for convs; linear rows as one pixel each)."""
    if isinstance(module, nn.Conv2d):
        return out.flatten(2)
    return out.reshape(out.shape[0], -1, out.shape[-1]).transpose(1, 2)


def _outputs_and_grads(model, paths, x, label, need_grad: bool):
    """Layer outputs [B, O, L] (and dF/d output) on the batch ``x``; F = logit of ``label``."""
    seen = {}

    def hook_for(path):
        def hook(module, inputs, out):
            seen[path] = out

        return hook

    handles = [get_module(model, p).register_forward_hook(hook_for(p)) for p in paths]
    try:
        with torch.enable_grad():
            logits = output(model, x)
            f = logits[:, label].sum()
            grads = (
                torch.autograd.grad(f, [seen[p] for p in paths])
                if need_grad
                else [None] * len(paths)
            )
    finally:
        for h in handles:
            h.remove()
    mods = [get_module(model, p) for p in paths]
    outs = {p: _flat(seen[p].detach(), m) for p, m in zip(paths, mods)}
    grads = {p: None if g is None else _flat(g, m) for p, g, m in zip(paths, grads, mods)}
    return outs, grads, logits[:, label].detach()


def layer_integrated_gradients(
    model,
    paths: list[str],
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    label: int,
    steps: int = 20,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({path: M [O, L]}, F(x) - F(x~)) for one clean / corrupted pair."""
    alphas = (torch.arange(steps, dtype=clean.dtype, device=clean.device) + 0.5) / steps
    path_x = corrupted[None] + alphas.view(-1, *([1] * clean.ndim)) * (clean - corrupted)[None]
    _, grads, _ = _outputs_and_grads(model, paths, path_x, label, True)
    ends, _, f = _outputs_and_grads(model, paths, torch.stack([clean, corrupted]), label, False)
    m = {p: (ends[p][0] - ends[p][1]) * grads[p].mean(0) for p in paths}
    return m, f[0] - f[1]


def editability(
    model, path: str, m: list[torch.Tensor], corrupted: torch.Tensor, second_moment: torch.Tensor
) -> float:
    """G_l for the pairs' IG maps ``m`` [O, L] each and corrupted inputs [n, ...]."""
    keys, _ = layer_keys(model, path, corrupted)  # [n, L, D]
    total = 0
    for i, mi in enumerate(m):
        d, _ = solve_spd(
            second_moment, keys[i].T.double(), what=f"key statistics of {path!r}"
        )  # [D, L]
        total = total + mi.double() @ d.T  # [O, D]
    return float(torch.linalg.matrix_norm(total))
