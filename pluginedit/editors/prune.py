"""Physical, dependency-aware structured pruning with torch-pruning; Scores decide what goes.
This module is the only place that speaks torch-pruning's importance protocol."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..core.components import output_layers
from ..core.errors import EditError, InputError
from ..core.plugin import Editor
from ..core.record import EditRecord
from ..core.scores import Scores

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


class ScoresImportance(tp.importance.Importance):
    """A torch-pruning importance reading pluginedit Scores: for each group, the scores of the
    group's scored out-channel layers, mapped onto the root indices, each layer normalised by
    its mean (so layers of different scale compete fairly under global pruning) and averaged."""

    def __init__(self, scores: Scores, paths: dict[nn.Module, str]):
        self.scores, self.paths = scores, paths

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total, hits = torch.zeros(len(group[0].root_idxs)), 0
        for i, (dep, idxs) in enumerate(group):
            path = self.paths.get(dep.layer)
            if path not in self.scores or not any(dep.pruning_fn == f for f in _OUT_FNS):
                continue
            s = self.scores[path]
            s = s / s.abs().mean().clamp_min(1e-12)
            total[torch.as_tensor(group[i].root_idxs)] += s[torch.as_tensor(idxs)]
            hits += 1
        return total / hits if hits else None


def check_ratio(ratio: float) -> float:
    if not 0.0 < float(ratio) < 1.0:
        raise InputError(f"ratio must lie in (0, 1), got {ratio}")
    return float(ratio)


def _check_still_runs(model, example, shape) -> None:
    """torch-pruning can trace a graph it does not fully see (e.g. through .numpy()); a pruned
    model that no longer runs, or changes its output shape, is a failed edit."""
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as e:
        raise EditError(f"the pruned model no longer runs ({type(e).__name__}: {e}); torch-pruning "
                        "did not see every dependency of this model; use the 'mask' editor") from e
    if out.shape != shape:
        raise EditError(f"pruning changed the output shape from {tuple(shape)} to {tuple(out.shape)}")


class PruneEditor(Editor):
    """Remove the lowest-scored channels physically. Options: ``ratio`` (fraction of channels
    per layer, or globally with ``global_pruning``), ``ignored`` (module paths kept whole),
    ``round_to`` (keep channel counts multiples of it), ``example_inputs`` (needed to trace)."""
    name = "prune"

    def apply(self, model, scores, example_inputs=None, **kw):
        opts = {**self.options, **kw}
        ratio = check_ratio(opts.get("ratio", 0.5))
        if example_inputs is None:
            raise InputError("prune needs example_inputs to trace the model's dependency graph")
        if scores is None:
            raise InputError("prune needs Scores")
        paths = {m: p for p, m in model.named_modules()}
        ignored = set(opts.get("ignored") or []) | set(output_layers(model, example_inputs))
        unknown = [p for p in ignored if p not in dict(model.named_modules())]
        if unknown:
            raise InputError(f"ignored layers not in the model: {unknown}")
        before = {p: m.weight.shape[0] for p, m in model.named_modules()
                  if p in scores and hasattr(m, "weight")}
        try:
            pruner = tp.pruner.MetaPruner(
                model, example_inputs, importance=ScoresImportance(scores, paths),
                pruning_ratio=ratio, global_pruning=bool(opts.get("global_pruning", False)),
                ignored_layers=[m for p, m in model.named_modules() if p in ignored],
                round_to=opts.get("round_to"))
        except Exception as e:
            raise EditError(f"torch-pruning cannot trace this model ({type(e).__name__}: {e}); "
                            "use the 'mask' editor instead") from e
        with torch.no_grad():
            shape = model(example_inputs).shape
        removed = {}
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                path = paths.get(dep.layer)
                if path in before and any(dep.pruning_fn == f for f in _OUT_FNS):
                    removed.setdefault(path, []).extend(int(i) for i in idxs)
            group.prune()
        if not removed:
            raise EditError("torch-pruning removed no channel: none of the scored layers has a "
                            "dependency path it can follow (untraceable ops such as .numpy()?)")
        _check_still_runs(model, example_inputs, shape)
        return EditRecord(self.name, {k: v for k, v in opts.items() if k != "example_inputs"},
                          semantics="removed (physical, torch-pruning)", changes=removed,
                          info={"channels_before": before})
