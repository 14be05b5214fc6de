"""Seeded uniform random scores: the baseline every criterion must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.components import get_module, size_of
from ..core.plugin import SEED, Scorer, option


@dataclass(frozen=True)
class RandomOptions:
    seed: int = option(0, "seed of the generator", **SEED)


class RandomScorer(Scorer):
    name = "random"
    Options = RandomOptions

    def score(self, model, stats, inputs):
        g = torch.Generator().manual_seed(self.options.seed)
        return {
            path: torch.rand(size_of(get_module(model, path)), generator=g)
            for path in inputs.targets
        }
