"""Robust edits (ALGORITHMS.md 7, Brown et al. 2023): direct low-rank editing and 1-layer
interpolation (1-LI).

``low-rank`` optimises dW = U V^T of rank r at one layer on the edit objective itself: cross
entropy of the corrupted inputs towards their labels, plus ``keep`` * tr(dW C dW^T) / tr(W C W^T)
(the relative change of the layer's outputs over the reference keys, C = E[k k^T]), so other
associations are preserved. ``interpolate`` runs any single-layer editor and keeps
W(t) = (1 - t) W + t W_edit: t trades edit success against the original behaviour."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..core import registry
from ..core.components import eval_mode, get_module
from ..core.errors import InputError
from ..core.plugin import COUNT, FRACTION, NONNEGATIVE, POSITIVE, SEED, Editor, option
from .rectify import _pairs_on, agreeing, key_statistics, last_feature_layer, rectification_reached


@dataclass(frozen=True)
class LowRankOptions:
    layer: str | None = option(None, "layer path to edit (default: the last feature layer)")
    rank: int = option(1, "rank r of dW = U V^T", **COUNT)
    steps: int = option(300, "Adam steps", **COUNT)
    lr: float = option(0.01, "Adam learning rate", **POSITIVE)
    keep: float = option(
        1.0, "weight of the preservation term tr(dW C dW^T) / tr(W C W^T)", **NONNEGATIVE
    )
    max_samples: int = option(2048, "samples of data for the key statistics C", **COUNT)
    seed: int = option(0, "initialisation seed of V", **SEED)


class LowRank(Editor):
    """Direct low-rank editing of one layer on the rectification objective."""

    name = "low-rank"
    kind = "rectify"
    needs_data = True
    needs_pairs = True
    uses_scores = False
    Options = LowRankOptions

    def apply(self, model, scores, inputs):
        opts = self.options
        layer = opts.layer or last_feature_layer(model, inputs)
        module = get_module(model, layer)
        c = key_statistics(model, [layer], inputs.data, opts.max_samples)[layer].to(module.weight)
        w0 = module.weight.detach().clone()
        before = agreeing(model, inputs.pairs)
        delta = self._optimise(model, layer, w0, c, inputs.pairs)
        record = self.record(f"rank-{opts.rank} weight update (optimised)", info={"layer": layer})
        record.saved[f"{layer}.weight"] = w0
        with torch.no_grad():
            module.weight.copy_(w0 + delta)
        record.changes[layer] = [opts.rank]
        rectification_reached(self.name, model, inputs.pairs, before, record, fail=True)
        return record

    def _optimise(self, model, layer, w0, c, pairs) -> torch.Tensor:
        opts = self.options
        _, corrupted, y = _pairs_on(model, pairs)
        flat = w0.flatten(1)
        g = torch.Generator().manual_seed(opts.seed)
        u = torch.zeros(flat.shape[0], opts.rank, device=w0.device, requires_grad=True)
        v = (
            (torch.randn(flat.shape[1], opts.rank, generator=g) / flat.shape[1] ** 0.5)
            .to(w0.device)
            .requires_grad_(True)
        )
        scale = torch.trace(flat @ c @ flat.T).clamp_min(1e-12)
        opt = torch.optim.Adam([u, v], lr=opts.lr)
        with eval_mode(model):
            for _ in range(opts.steps):
                d = u @ v.T
                logits = functional_call(
                    model, {f"{layer}.weight": w0 + d.reshape(w0.shape)}, (corrupted,)
                )
                loss = F.cross_entropy(logits, y) + opts.keep * torch.trace(d @ c @ d.T) / scale
                opt.zero_grad()
                loss.backward()
                opt.step()
        delta = (u @ v.T).detach().reshape(w0.shape)
        if not torch.isfinite(delta).all():
            raise InputError("low-rank: the optimised edit is not finite (lower lr)")
        return delta


def interpolate(
    model, original: dict[str, torch.Tensor], edited: dict[str, torch.Tensor], t: float
) -> None:
    """Set each parameter named in ``original`` to (1 - t) original + t edited, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, w in original.items():
            params[name].copy_(w + t * (edited[name].to(w) - w))


@dataclass(frozen=True)
class InterpolateOptions:
    base: str = option("rank-one", "the single-layer editor whose edit is interpolated")
    t: float = option(
        0.5, "interpolation weight: 0 = the original layer, 1 = the full edit", **FRACTION
    )
    base_options: dict = option({}, "options of the base editor")


class Interpolate(Editor):
    """1-layer interpolation of a single-layer edit: W(t) = (1 - t) W + t W_edit."""

    name = "interpolate"
    kind = "rectify"
    needs_data = True
    needs_pairs = True
    uses_scores = False
    Options = InterpolateOptions

    def apply(self, model, scores, inputs):
        opts = self.options
        base = registry.get_editor(opts.base, **opts.base_options)
        before = agreeing(model, inputs.pairs)
        inner = base.apply(model, scores, inputs)
        layers = {k.rsplit(".", 1)[0] for k in inner.saved}
        if len(layers) != 1:
            raise InputError(
                f"interpolate needs a single-layer edit; {opts.base!r} changed {sorted(layers)}"
            )
        params = dict(model.named_parameters())
        edited = {k: params[k].detach().clone() for k in inner.saved}
        interpolate(model, inner.saved, edited, opts.t)
        record = self.record(
            f"1-layer interpolation (t={opts.t}) of {opts.base}",
            info={"layer": layers.pop(), "base": inner.summary()},
        )
        record.saved, record.changes = inner.saved, inner.changes
        # t < 1 may undo what the base edit reached: recorded (the CLI says so), not refused
        rectification_reached(self.name, model, inputs.pairs, before, record, fail=False)
        return record
