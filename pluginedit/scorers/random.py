"""Seeded uniform random scores: the baseline every criterion must beat."""
from __future__ import annotations

import torch

from ..core.components import get_module, size_of
from ..core.plugin import Scorer


class RandomScorer(Scorer):
    name = "random"

    def score(self, model, targets, stats, data=None, num_classes=None):
        g = torch.Generator().manual_seed(int(self.options.get("seed", 0)))
        return {path: torch.rand(size_of(get_module(model, path)), generator=g) for path in targets}
