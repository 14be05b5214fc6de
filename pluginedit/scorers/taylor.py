"""First-order Taylor importance from torch-pruning, wrapped as a scorer plugin: shows that any
torch-pruning importance (a callable on a dependency group) can serve as a pluginedit scorer."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..capture import batches
from ..core.components import get_module, size_of
from ..core.plugin import Scorer


def group_scores(model: nn.Module, example: torch.Tensor, importance, targets: list[str]) -> dict:
    """Call a torch-pruning importance on the out-channel group rooted at each target layer."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    out = {}
    for path in targets:
        layer = get_module(model, path)
        fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
        group = dg.get_pruning_group(layer, fn, idxs=list(range(size_of(layer))))
        out[path] = importance(group).detach().float()
    return out


class TaylorScorer(Scorer):
    """|w · dL/dw| summed over each group (Molchanov et al.), gradients of the cross-entropy
    accumulated over ``max_samples`` labelled samples."""
    name = "taylor"
    needs_data = True
    needs_labels = True

    def score(self, model, targets, stats, data=None, num_classes=None):
        max_samples = int(self.options.get("max_samples", 1024))
        was_training = model.training
        model.eval()  # BN in inference mode: gradients of the deployed function
        model.zero_grad(set_to_none=True)
        example = None
        try:
            for x, y in batches(model, data, num_classes, max_samples=max_samples):
                example = x[:1] if example is None else example
                nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
            return group_scores(model, example, tp.importance.TaylorImportance(), targets)
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
