"""Physical, dependency-aware structured pruning with torch-pruning; Scores decide what goes."""
from __future__ import annotations

from dataclasses import dataclass

from ..capture import head_layers
from ..core.errors import EditError, InputError
from ..core.plugin import Editor, option
from . import _tp


def check_ratio(ratio: float, name: str = "ratio") -> float:
    if not 0.0 < float(ratio) < 1.0:
        raise InputError(f"{name} must lie in (0, 1), got {ratio}")
    return float(ratio)


def check_still_runs(model, example, shape) -> None:
    """torch-pruning can trace a graph it does not fully see (e.g. through .numpy()); a pruned
    model that no longer runs, or changes its output shape, is a failed edit."""
    try:
        now = _tp.call_shape(model, example)
    except Exception as e:
        raise EditError(f"the pruned model no longer runs ({type(e).__name__}: {e}); torch-pruning "
                        "did not see every dependency of this model; use the 'mask' editor") from e
    if now != shape:
        raise EditError(f"pruning changed the output shape from {shape} to {now}")


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = option(0.5, "fraction of channels removed (per coupled group, or globally)")
    global_pruning: bool = option(False, "rank channels across layers instead of per layer")
    ignored: list | None = option(None, "module paths kept whole (the classifier head always is)")
    round_to: int | None = option(None, "keep channel counts multiples of this")

    def __post_init__(self):
        check_ratio(self.ratio)


class PruneEditor(Editor):
    """Remove the lowest-scored channels physically (torch-pruning); needs example inputs to
    trace the dependency graph."""
    name = "prune"
    kind = "prune"
    Options = PruneOptions

    def apply(self, model, scores, inputs):
        if scores is None:
            raise InputError("prune needs Scores")
        if inputs.example is None:
            raise InputError("prune needs example_inputs (or data) to trace the model's dependency graph")
        o = self.options
        modules = dict(model.named_modules())
        unknown = [p for p in (o.ignored or []) if p not in modules]
        if unknown:
            raise InputError(f"ignored layers not in the model: {unknown}")
        ignored = set(o.ignored or []) | set(head_layers(model, inputs.example))
        if not set(scores) - ignored:
            raise InputError(f"nothing to prune: the scores name no layer outside the classifier head "
                             f"and the ignored ones (scored: {list(scores)}; kept: {sorted(ignored)})")
        before = {p: modules[p].weight.shape[0] for p in scores if p in modules}
        shape = _tp.call_shape(model, inputs.example)
        removed, steps = _tp.prune_by_scores(model, inputs.example, scores, o.ratio, ignored,
                                             o.global_pruning, o.round_to)
        removed = {p: v for p, v in removed.items() if p in before}
        if not removed:
            raise EditError("torch-pruning removed no channel: none of the scored layers has a "
                            "dependency path it can follow (untraceable ops such as .numpy()?)")
        check_still_runs(model, inputs.example, shape)
        return self.record("removed (physical, torch-pruning)", scores, changes=removed, steps=steps,
                           info={"channels_before": before})
