"""Three scorers: one with a mergeable statistic of its own (``wanda``), one with a built-in
statistic (``act-rms``), one that reads weights only (``bn-gamma``)."""

from torch import nn

import pluginedit as pe
from pluginedit.core.components import bn_of, get_module, size_of
from pluginedit.stats import ChannelMoments

from .stats import InputSquares


class WandaScorer(pe.Scorer):
    """Wanda (Sun et al., 2023) for structured components: output unit i of a conv or linear
    layer scores sum_j |W_ij| * ||X_j||, X_j being input channel j over the calibration data
    (root-mean-square over samples and positions). Grouped convs and attention blocks among the
    targets are left unscored."""

    name = "wanda"
    needs_data = True

    def requests(self, model, inputs):
        wanted = {}
        for path in inputs.targets:
            layer = get_module(model, path)
            if isinstance(layer, nn.Conv2d) and layer.groups == 1:
                wanted[path] = pe.Request(path, InputSquares(layer.in_channels, 1), "input")
            elif isinstance(layer, nn.Linear):
                wanted[path] = pe.Request(path, InputSquares(layer.in_features, -1), "input")
        return wanted

    def score(self, model, stats, inputs):
        out = {}
        for path, stat in stats.items():
            w = get_module(model, path).weight.detach()
            norm = stat.rms().to(w.device, w.dtype).reshape(1, -1, *[1] * (w.ndim - 2))
            out[path] = (w.abs() * norm).flatten(1).sum(1)
        return out, {"input_norm": "RMS over samples and positions"}


class ActRMSScorer(pe.Scorer):
    """The root-mean-square activation of each output unit. It declares a built-in
    ``ChannelMoments`` statistic per layer, so it shares the pass with every other scorer."""

    name = "act-rms"
    needs_data = True

    def requests(self, model, inputs):
        return {
            path: pe.Request(path, ChannelMoments(size_of(get_module(model, path))), "output")
            for path in inputs.targets
        }

    def score(self, model, stats, inputs):
        out = {}
        for path, s in stats.items():
            count, mean, m2 = s.overall()
            out[path] = (m2 / count.clamp_min(1) + mean.square()).sqrt().float()
        return out


class BNGammaScorer(pe.Scorer):
    """|gamma| of the BatchNorm after each conv (Liu et al., "network slimming", 2017); layers
    without one fall back to the L1 norm of their weights. Needs no data, but like every scorer
    it needs ``example_inputs=``, ``num_classes=`` or ``data=`` to leave out the classifier head
    (or the ``targets=`` themselves)."""

    name = "bn-gamma"

    def score(self, model, stats, inputs):
        bns = bn_of(model)
        out = {}
        for path in inputs.targets:
            if path in bns:
                out[path] = get_module(model, bns[path]).weight.detach().abs()
            elif isinstance(get_module(model, path), (nn.Conv2d, nn.Linear)):
                w = get_module(model, path).weight.detach()
                out[path] = w.reshape(w.shape[0], -1).abs().sum(1)
        return out
