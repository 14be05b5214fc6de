"""A third-party scorer plugin: |gamma| of the BatchNorm that follows each conv (Liu et al.,
"network slimming", 2017). Layers without a BatchNorm fall back to the L1 norm of their weights."""
from pluginedit.core.components import bn_of, get_module
from pluginedit.core.plugin import Scorer


class BNGammaScorer(Scorer):
    name = "bn-gamma"

    def score(self, model, targets, stats, data=None, num_classes=None):
        bns = bn_of(model)
        out = {}
        for path in targets:
            if path in bns:
                out[path] = get_module(model, bns[path]).weight.detach().abs()
            else:
                w = get_module(model, path).weight.detach()
                out[path] = w.reshape(w.shape[0], -1).abs().sum(1)
        return out
