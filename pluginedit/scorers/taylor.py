"""First-order Taylor importance from torch-pruning, wrapped as a scorer plugin: shows that any
torch-pruning importance (a callable on a dependency group) can serve as a pluginedit scorer."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from ..capture import batches
from ..core.components import eval_mode, get_module, size_of
from ..core.errors import InputError
from ..core.outputs import call, primary
from ..core.plugin import Scorer, option


def group_scores(model: nn.Module, example: torch.Tensor, importance, targets: list[str]) -> dict:
    """Call a torch-pruning importance (an object, or "taylor") on the out-channel group rooted
    at each target layer."""
    if importance == "taylor":
        importance = tp.importance.TaylorImportance()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    out = {}
    for path in targets:
        layer = get_module(model, path)
        fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
        group = dg.get_pruning_group(layer, fn, idxs=list(range(size_of(layer))))
        out[path] = importance(group).detach().float()
    return out


@dataclass(frozen=True)
class TaylorOptions:
    max_samples: int = option(1024, "labelled samples whose cross-entropy gradients are accumulated")

    def __post_init__(self):
        if self.max_samples < 1:
            raise InputError(f"max_samples must be >= 1, got {self.max_samples}")


class TaylorScorer(Scorer):
    """|w · dL/dw| summed over each group (Molchanov et al.), gradients of the cross-entropy
    accumulated over ``max_samples`` labelled samples with BN in inference mode. Gradients are
    cleared afterwards and the training mode restored: the model is left as it was."""
    name = "taylor"
    needs_data = True
    needs_labels = True
    own_loop = True
    Options = TaylorOptions

    def score(self, model, stats, inputs):
        model.zero_grad(set_to_none=True)
        try:   # BN in inference mode: gradients of the deployed function
            with eval_mode(model):
                for x, y in batches(model, inputs.data, inputs.num_classes, max_samples=self.options.max_samples):
                    nn.functional.cross_entropy(primary(call(model, x)), y, reduction="sum").backward()
                return group_scores(model, inputs.example, "taylor", inputs.targets)
        finally:
            model.zero_grad(set_to_none=True)
