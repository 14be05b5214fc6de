"""Zero components in place, reversibly: the fallback for models torch-pruning cannot trace,
and the semantics class forgetting uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.components import bn_of, check_targets, get_module
from ..core.errors import InputError
from ..core.plugin import RATIO, Editor, option
from ..core.record import EditRecord
from ..core.scores import Scores


def select_lowest(scores: Scores, ratio: float, targets=None) -> dict[str, list[int]]:
    """Per layer, the ``ratio`` fraction of components with the lowest scores."""
    out = {}
    for path in targets or scores:
        n = int(len(scores[path]) * ratio)
        if n:
            out[path] = scores.lowest(path, n).tolist()
    return out


def zero_components(
    model, indices: dict[str, list[int]], with_bn: bool, record: EditRecord, bias: bool = True
) -> None:
    """Zero weight rows (and the bias when ``bias``, and the following BN's affine when
    ``with_bn``), saving the originals in ``record`` so the edit can be undone. Every index is
    checked first: a bad one changes nothing."""
    for path, idx in indices.items():
        n = get_module(model, path).weight.shape[0]
        if idx and (max(idx) >= n or min(idx) < 0):
            raise InputError(f"component index out of range for {path!r} ({n} components)")
    bns = bn_of(model) if with_bn else {}
    with torch.no_grad():
        for path, idx in indices.items():
            if not idx:
                continue
            module = get_module(model, path)
            touched = [(path, module)] + (
                [(bns[path], get_module(model, bns[path]))] if path in bns else []
            )
            for mpath, m in touched:
                for pname in ("weight", "bias") if bias or m is not module else ("weight",):
                    p = getattr(m, pname, None)
                    if p is None:
                        continue
                    key = f"{mpath}.{pname}" if mpath else pname
                    record.saved.setdefault(key, p.detach().clone())
                    p[torch.as_tensor(idx)] = 0
            record.changes.setdefault(path, []).extend(idx)


@dataclass(frozen=True)
class MaskOptions:
    indices: dict | None = option(
        None, "{layer path: [component, ...]} to zero (instead of scores)"
    )
    ratio: float = option(0.5, "with Scores: the lowest fraction of each scored layer", **RATIO)
    with_bn: bool = option(True, "also zero the following BatchNorm's affine (the channel emits 0)")


class MaskEditor(Editor):
    """Zero components in place; ``record.undo(model)`` restores them. With Scores, the
    layers masked are the ``targets`` given (default: every scored layer)."""

    name = "mask"
    kind = "mask"
    Options = MaskOptions

    def apply(self, model, scores, inputs):
        opts = self.options
        indices = opts.indices
        if indices is None:
            if scores is None:
                raise InputError("mask needs either indices or Scores with a ratio")
            unscored = [t for t in inputs.targets if t not in scores]
            if unscored:
                raise InputError(f"mask: targets {unscored} have no scores; scored: {list(scores)}")
            indices = select_lowest(scores, opts.ratio, inputs.targets)
        elif inputs.targets:
            raise InputError(
                "mask: targets choose among scored layers; with indices, name the layers there"
            )
        else:
            check_targets(model, indices, "mask indices")
        record = self.record(
            "zeroed weight+bias" + ("+bn affine" if opts.with_bn else ""),
            scores if opts.indices is None else None,
        )
        zero_components(model, {k: list(v) for k, v in indices.items()}, opts.with_bn, record)
        return record
