"""Weight-magnitude scorers: the norm of each output filter / neuron's weights."""

from __future__ import annotations

import torch

from ..core.components import get_module, kind_of
from ..core.plugin import Scorer


class _NormScorer(Scorer):
    p: float = 1.0

    def score(self, model, stats, inputs):
        out = {}
        for path in inputs.targets:
            module = get_module(model, path)
            if kind_of(module) == "attn_head":  # a head: its rows of the query, key and value
                h = module.num_attention_heads
                w = torch.cat(
                    [
                        getattr(module, n).weight.detach().reshape(h, -1)
                        for n in ("query", "key", "value")
                    ],
                    1,
                )
            else:
                w = module.weight.detach()
            out[path] = w.reshape(w.shape[0], -1).norm(p=self.p, dim=1)
        return out


class L1Scorer(_NormScorer):
    """L1 norm of each output unit's weights (Li et al., 2017)."""

    name = "l1"
    p = 1.0


class L2Scorer(_NormScorer):
    """L2 norm of each output unit's weights."""

    name = "l2"
    p = 2.0
