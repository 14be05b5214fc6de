"""Shared by the bad-input tests: a tiny model, its data, and the check that a model came out of
a failed (or read-only) call exactly as it went in."""

from __future__ import annotations

import torch
from torch import nn

X = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(16) % 4


def tiny(classes: int = 4) -> nn.Module:
    """conv(3->8) - BN - ReLU - pool - linear(8->classes), in eval mode."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).eval()


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)  # NaN-proof, -0.0-proof


class Untouched:
    """A record of everything a failed call must leave alone: every state_dict tensor (dtype,
    shape and bytes), the identity of every module and parameter object (references the user
    holds stay valid), the structure and each module's training flag."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self.structure = repr(model)
        self.modes = [m.training for m in model.modules()]

    def problems(self) -> list[str]:
        model, out = self.model, []
        now = model.state_dict()
        if now.keys() != self.state.keys():
            out.append(f"state_dict keys changed: {sorted(set(now) ^ set(self.state))}")
        for k in self.state.keys() & now.keys():
            a, b = self.state[k], now[k]
            if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(_bytes(a), _bytes(b)):
                out.append(f"tensor {k!r} changed")
        params = dict(model.named_parameters(remove_duplicate=False))
        if params.keys() != self.params.keys() or any(
            params[k] is not p for k, p in self.params.items()
        ):
            out.append("parameter objects replaced")
        modules = dict(model.named_modules(remove_duplicate=False))
        if modules.keys() != self.modules.keys() or any(
            modules[k] is not m for k, m in self.modules.items()
        ):
            out.append("module objects replaced")
        if repr(model) != self.structure:
            out.append("structure changed")
        if [m.training for m in model.modules()] != self.modes:
            out.append("training flags changed")
        return out

    def check(self) -> None:
        problems = self.problems()
        assert not problems, problems
