"""First-order Taylor importance from torch-pruning, wrapped as a scorer plugin (through the
dependency layer, ``pluginedit.graph``): any torch-pruning importance can serve as a pluginedit
scorer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..capture import batches
from ..core.components import eval_mode, grads_kept
from ..core.outputs import output
from ..core.plugin import COUNT, Scorer, option
from ..graph.groups import group_scores
from ..stats.distributed import sum_gradients


@dataclass(frozen=True)
class TaylorOptions:
    max_samples: int = option(
        1024, "labelled samples whose cross-entropy gradients are accumulated", **COUNT
    )


class TaylorScorer(Scorer):
    """|w · dL/dw| summed over each group (Molchanov et al.), gradients of the cross-entropy
    accumulated over ``max_samples`` labelled samples with BN in inference mode. Each
    parameter's ``.grad`` is put back afterwards (the same tensor, or None) and the training
    mode restored: the model is left as it was, gradients the user accumulated included."""

    name = "taylor"
    needs_data = True
    needs_labels = True
    own_loop = True
    Options = TaylorOptions

    def score(self, model, stats, inputs):
        # backward() adds to .grad: the user's gradients are set aside and put back after;
        # BN in inference mode: gradients of the deployed function
        with grads_kept(model), eval_mode(model):
            for x, y in batches(
                model,
                inputs.data,
                inputs.num_classes,
                max_samples=self.options.max_samples,
                shard=True,
            ):
                nn.functional.cross_entropy(output(model, x), y, reduction="sum").backward()
            sum_gradients(model.parameters())  # each rank's shard, under torch.distributed
            return group_scores(model, inputs.example, "taylor", inputs.targets)
