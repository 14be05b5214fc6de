"""Shared helpers of the statistics ops."""

from __future__ import annotations

import math

import torch


def _as_nc_l(x: torch.Tensor) -> torch.Tensor:
    """[N, C, *spatial] or [N, C] -> [N, C, L] (L = 1 for features)."""
    # An explicit length (not -1) so an empty batch (N = 0) reshapes too.
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))
