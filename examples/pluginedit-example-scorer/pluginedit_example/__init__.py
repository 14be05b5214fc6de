"""A third-party pluginedit package: two scorers and a reversible editor.

* ``bn-gamma``: |gamma| of the BatchNorm after each conv (Liu et al., "network slimming", 2017);
  layers without one fall back to the L1 norm of their weights. Needs no data.
* ``act-rms``: the root-mean-square activation of each output channel. It declares a
  ``ChannelMoments`` statistic per layer instead of running its own loop, so it shares one pass
  over the data with every other scorer asked at the same time.
* ``zero-lowest``: zeroes the lowest-scored fraction of each layer's output channels, saving the
  originals in the record so ``record.undo(model)`` restores them.
"""
from dataclasses import dataclass

import torch

from pluginedit import Editor, Request, Scorer, option
from pluginedit.core.components import bn_of, get_module, size_of
from pluginedit.core.errors import InputError
from pluginedit.stats import ChannelMoments


class BNGammaScorer(Scorer):
    name = "bn-gamma"

    def score(self, model, stats, inputs):
        bns = bn_of(model)
        out = {}
        for path in inputs.targets:
            if path in bns:
                out[path] = get_module(model, bns[path]).weight.detach().abs()
            else:
                w = get_module(model, path).weight.detach()
                out[path] = w.reshape(w.shape[0], -1).abs().sum(1)
        return out


class ActRMSScorer(Scorer):
    name = "act-rms"
    needs_data = True

    def requests(self, model, inputs):
        # One handle per target; pluginedit collects them in the shared pass and hands the
        # statistics back to ``score`` under the same keys.
        return {path: Request(path, ChannelMoments(size_of(get_module(model, path))), "output")
                for path in inputs.targets}

    def score(self, model, stats, inputs):
        out = {}
        for path, s in stats.items():
            count, mean, m2 = s.overall()
            out[path] = (m2 / count.clamp_min(1) + mean.square()).sqrt().float()
        return out


@dataclass(frozen=True)
class ZeroLowestOptions:
    fraction: float = option(0.25, "fraction of each scored layer's channels to zero")

    def __post_init__(self):
        if not 0 < self.fraction < 1:
            raise InputError(f"fraction must lie in (0, 1), got {self.fraction}")


class ZeroLowestEditor(Editor):
    name = "zero-lowest"
    kind = "mask"
    Options = ZeroLowestOptions

    def apply(self, model, scores, inputs):
        if scores is None:
            raise InputError("zero-lowest needs Scores")
        record = self.record("zeroed weight (+bias) rows", scores)
        with torch.no_grad():
            for path in scores:
                layer = get_module(model, path)
                idx = scores.lowest(path, int(len(scores[path]) * self.options.fraction))
                if len(idx) == 0:
                    continue
                for name in ("weight", "bias"):
                    p = getattr(layer, name, None)
                    if p is not None:
                        record.saved.setdefault(f"{path}.{name}", p.detach().clone())
                        p[idx] = 0
                record.changes[path] = idx.tolist()
        return record
