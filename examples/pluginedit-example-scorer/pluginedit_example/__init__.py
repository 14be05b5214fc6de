"""A third-party scorer plugin: |gamma| of the BatchNorm that follows each conv (Liu et al.,
"network slimming", 2017). Layers without a BatchNorm fall back to the L1 norm of their weights."""
from pluginedit import Scorer
from pluginedit.core.components import bn_of, get_module


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
