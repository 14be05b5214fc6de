"""Two reversible editors: each saves the original tensors in its EditRecord, so
``record.undo(model)`` restores the model exactly."""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

import pluginedit as pe
from pluginedit.core.components import get_module


def _scale_rows(model, scores, paths, fraction: float, factor: float, record) -> None:
    """Multiply the weight rows (and bias entries) of the lowest ``fraction`` of each layer's
    components by ``factor``, saving the originals in ``record``."""
    with torch.no_grad():
        for path in paths:
            idx = scores.lowest(path, int(len(scores[path]) * fraction))
            layer = get_module(model, path)
            if len(idx) == 0 or not isinstance(layer, (nn.Conv2d, nn.Linear)):
                continue
            for name in ("weight", "bias"):
                p = getattr(layer, name)
                if p is None:
                    continue
                record.saved.setdefault(f"{path}.{name}", p.detach().clone())
                p[idx] *= factor
            record.changes[path] = idx.tolist()


@dataclass(frozen=True)
class ScaleLowestOptions:
    fraction: float = pe.option(0.25, "share of each layer's components scaled", above=0, below=1)
    factor: float = pe.option(0.0, "what their weights are multiplied by (0: masked)", at_least=0)
    fallback: Literal["l1", "l2"] = pe.option("l1", "scorer used when pe.edit is given no Scores")

    def __post_init__(self):
        if self.factor == 1.0:
            raise pe.InputError(
                "option 'factor' of 'scale-lowest' is 1.0: the edit would change nothing"
            )


class ScaleLowestEditor(pe.Editor):
    """Multiply the weights (and bias) of the lowest-scored ``fraction`` of each layer's
    components by ``factor``. Given no Scores, it scores the weights with ``fallback`` itself
    (pluginedit never scores for an editor). ``targets=`` restricts the layers."""

    name = "scale-lowest"
    kind = "mask"
    Options = ScaleLowestOptions

    def apply(self, model, scores, inputs):
        o = self.options
        if scores is None:
            scores = pe.score(
                model,
                o.fallback,
                data=inputs.data,
                example_inputs=inputs.example,
                num_classes=inputs.num_classes,
            )
        record = self.record(f"scaled weight+bias by {o.factor}", scores)
        _scale_rows(model, scores, inputs.targets or scores, o.fraction, o.factor, record)
        record.info["scaled"] = record.num_changed()
        return record


@dataclass(frozen=True)
class ZeroLowestOptions:
    fraction: float = pe.option(
        0.25, "fraction of each scored layer's channels to zero", above=0, below=1
    )


class ZeroLowestEditor(pe.Editor):
    """Zero the lowest-scored ``fraction`` of each scored layer's output channels. Needs
    Scores: given none, it refuses with an InputError saying what to pass."""

    name = "zero-lowest"
    kind = "mask"
    Options = ZeroLowestOptions

    def apply(self, model, scores, inputs):
        if scores is None:
            raise pe.InputError("zero-lowest needs Scores: pe.edit(model, 'zero-lowest', scores)")
        record = self.record("zeroed weight (+bias) rows", scores)
        _scale_rows(model, scores, inputs.targets or scores, self.options.fraction, 0.0, record)
        return record
