"""Zero components in place, reversibly: the fallback for models torch-pruning cannot trace,
and the semantics class forgetting uses."""
from __future__ import annotations

import torch

from ..core.components import bn_of, get_module
from ..core.errors import InputError
from ..core.plugin import Editor
from ..core.record import EditRecord
from ..core.scores import Scores
from .prune import check_ratio


def select_lowest(scores: Scores, ratio: float, targets=None) -> dict[str, list[int]]:
    """Per layer, the ``ratio`` fraction of components with the lowest scores."""
    out = {}
    for path in targets or scores:
        n = int(len(scores[path]) * ratio)
        if n:
            out[path] = scores.lowest(path, n).tolist()
    return out


def zero_components(model, indices: dict[str, list[int]], with_bn: bool, record: EditRecord) -> None:
    """Zero weight rows (and bias, and the following BN's affine when ``with_bn``), saving the
    originals in ``record`` so the edit can be undone."""
    bns = bn_of(model) if with_bn else {}
    with torch.no_grad():
        for path, idx in indices.items():
            module = get_module(model, path)
            if not idx:
                continue
            if max(idx) >= module.weight.shape[0] or min(idx) < 0:
                raise InputError(f"component index out of range for {path!r} "
                                 f"({module.weight.shape[0]} components)")
            touched = [(path, module)] + ([(bns[path], get_module(model, bns[path]))] if path in bns else [])
            for mpath, m in touched:
                for pname in ("weight", "bias"):
                    p = getattr(m, pname, None)
                    if p is None:
                        continue
                    key = f"{mpath}.{pname}" if mpath else pname
                    record.saved.setdefault(key, p.detach().clone())
                    p[torch.as_tensor(idx)] = 0
            record.changes.setdefault(path, []).extend(idx)


class MaskEditor(Editor):
    """Options: ``indices`` ({path: [component, ...]}) or ``ratio`` with Scores (the lowest
    fraction per layer); ``with_bn`` also zeroes the BN affine so the channel emits exactly 0."""
    name = "mask"

    def apply(self, model, scores, **kw):
        opts = {**self.options, **kw}
        opts.pop("example_inputs", None)
        indices = opts.get("indices")
        if indices is None:
            if scores is None:
                raise InputError("mask needs either indices or Scores with a ratio")
            indices = select_lowest(scores, check_ratio(opts.get("ratio", 0.5)))
        with_bn = bool(opts.get("with_bn", True))
        record = EditRecord(self.name, opts, "zeroed weight+bias" + ("+bn affine" if with_bn else ""))
        zero_components(model, indices, with_bn, record)
        return record
