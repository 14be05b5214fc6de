"""DisCEdit-U (ALGORITHMS.md §3.5): forget a class by zeroing its most discriminative filters.
Statistics are recomputed on the partially edited model layer by layer.

Edited channels have conv weight, conv bias and the following BN's affine zeroed, so they emit
exactly 0 (no BN constant survives to be folded into the next layer).
The last 4 convs are candidates (the paper: the last 8 of VGG-16, ResNet-56's layer3): with 2, a
ResNet with two blocks per stage kept 14-93 % of the class, its last two convs sitting inside a
block whose skip path still carries it (benchmarks/forget_family.py)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..capture import Request, Split, collect, head_layers
from ..capture.hookpoints import resolve, resolve_auto
from ..core.batches import take_rows
from ..core.components import get_module, groups, size_of
from ..core.errors import InputError
from ..core.plugin import COUNT, FRACTION, NONNEGATIVE, POSITIVE, Editor, option
from ..core.record import EditRecord
from ..evaluate import class_accuracy
from ..scorers.witness import witness_scores
from ..stats import ClassMoments
from .common.finetune import fit
from .mask import zero_components


def layer_scores(
    model,
    layer,
    data,
    num_classes,
    hook,
    gamma,
    max_samples,
    batch_size,
    active_only=False,
    **witness,
) -> torch.Tensor:
    """Witness scores [C] of one layer's channels on the model as it is now. ``active_only``
    zeroes the score of channels less active (larger exp(-gamma ||A||)) on the target class
    than on the rest: removing those would not remove the class's evidence."""
    module, where = resolve_auto(model, layer) if hook == "auto" else resolve(model, layer, hook)
    req = Request(
        module, ClassMoments(size_of(get_module(model, layer)), num_classes, gamma=gamma), where
    )
    stat = collect(model, data, [req], num_classes, batch_size, max_samples, stop_early=True)[req]
    r = witness_scores(stat, **witness)
    if active_only:
        k = witness["target_class"]
        n_rest, s_rest = stat.rest()
        e_k, e_rest = stat.sums[k, :, 4] / stat.count[k], s_rest[k, :, 4] / n_rest[k]
        r = torch.where(e_k < e_rest, r, torch.zeros_like(r))
    return r


def halves(data) -> tuple[Split, Split]:
    """(even, odd) samples of a Split or an (x, y) pair: scoring and checking halves."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        data = Split(*data)
    if not isinstance(data, Split):
        raise InputError(
            f"check='held-out' needs a Split or (x, y) tensors, got {type(data).__name__}"
        )
    if len(data) < 2:
        raise InputError("check='held-out' needs at least 2 samples")
    n = len(data)
    return (
        Split(take_rows(data.x, slice(0, n, 2)), data.y[0::2]),
        Split(take_rows(data.x, slice(1, n, 2)), data.y[1::2]),
    )


def conv_layers(model, example) -> list[str]:
    heads = set(head_layers(model, example))
    return [p for p, m in groups(model).items() if isinstance(m, nn.Conv2d) and p not in heads]


@dataclass(frozen=True)
class DisCEditUOptions:
    layers: list[str] | None = option(None, "conv layer paths (default: the last num_layers)")
    num_layers: int = option(
        4,
        "how many of the last conv layers to consider (adaptive: deepest first, "
        "stopping once the class is forgotten)",
        **COUNT,
    )
    hook: Literal["auto", "conv", "bn", "act", "ln"] = option("auto", "where channels are observed")
    select: Literal["adaptive", "top_m", "zscore"] = option(
        "adaptive", "fewest top channels that forget the class / the top m / above mean + z std"
    )
    m: float = option(
        0.5, "top_m: a count, or a fraction of the layer when < 1; adaptive: the cap", **NONNEGATIVE
    )
    forget_target: float = option(
        0.02, "adaptive: forgotten-class accuracy to reach on the data", **FRACTION
    )
    check: Literal["data", "held-out"] = option(
        "data",
        "adaptive: check forgetting on the scored data (the authors') or on a held-out half of it "
        "(scores from the other half), so the stopping rule is not fitted to the scored samples",
    )
    z: float = option(1.5, "zscore threshold")
    gamma: float = option(1.0, "scale of the exp witness", **POSITIVE)
    active_only: bool = option(True, "only channels more active on the class than on the rest")
    method: Literal["fisher", "mpm", "robust", "raw"] = option("fisher", "witness bound")
    features: Literal["poly", "linear", "exp"] = option("linear", "witness features")
    max_samples: int = option(4096, "samples read per statistic / accuracy check", **COUNT)
    batch_size: int = option(256, "batch size of the passes", **COUNT)
    finetune_epochs: int = option(
        0, "fine-tune on the retained classes afterwards (edits re-zeroed)", **NONNEGATIVE
    )
    finetune_lr: float = option(5e-4, "fine-tuning learning rate", **POSITIVE)


class DisCEditU(Editor):
    """Per chosen layer, the raw-moment witness bound of each channel for the forgotten class vs
    the rest; the most discriminative channels are zeroed. ``adaptive`` visits layers deepest
    first and stops once the class is forgotten on ``data``."""

    name = "discedit-u"
    kind = "forget"
    needs_data = True
    needs_labels = True
    uses_scores = False
    Options = DisCEditUOptions

    def apply(self, model, scores, inputs):
        opts, k = self.options, inputs.forget_class
        layers = opts.layers or conv_layers(model, inputs.example)[-opts.num_layers :]
        record = self.record(
            "zeroed weight+bias+bn affine", info={"forget_class": k, "skipped": []}
        )
        adaptive = opts.select == "adaptive"
        scored, check = (
            halves(inputs.data) if opts.check == "held-out" else (inputs.data, inputs.data)
        )
        for layer in list(reversed(layers)) if adaptive else layers:
            r = layer_scores(
                model,
                layer,
                scored,
                inputs.num_classes,
                opts.hook,
                opts.gamma,
                opts.max_samples,
                opts.batch_size,
                opts.active_only,
                method=opts.method,
                features=opts.features,
                aggregation="ovr_min",
                target_class=k,
            )
            idx = self._adaptive(model, layer, r, inputs, check) if adaptive else self._select(r)
            if not idx:  # guard: the authors' [-0:] slice would select every filter
                record.info["skipped"].append(layer)
                continue
            zero_components(model, {layer: idx}, True, record)
            if adaptive and self._forgotten(model, inputs, check) <= opts.forget_target:
                break
        else:
            if adaptive:
                self._short_of_target(model, inputs, check, record, len(layers))
        if opts.finetune_epochs:
            self._finetune(model, inputs, record)
        return record

    def _short_of_target(self, model, inputs, check, record, n_layers: int) -> None:
        """Every candidate layer used and the class not forgotten on the check data: say so (on
        narrow ResNets the last two convs could not remove a class the skip path still carries)."""
        left = self._forgotten(model, inputs, check)
        record.info["forgotten_accuracy"] = left
        if left > self.options.forget_target:
            warnings.warn(
                f"discedit-u: class {inputs.forget_class} still at {left:.1%} on the check data "
                f"(forget_target {self.options.forget_target:.1%}) after all {n_layers} candidate "
                "conv layers; raise num_layers or m",
                stacklevel=2,
            )

    def _forgotten(self, model, inputs, check) -> float:
        opts = self.options
        return class_accuracy(
            model, check, inputs.forget_class, inputs.num_classes, opts.batch_size, opts.max_samples
        )

    def _select(self, r: torch.Tensor, select: str | None = None) -> list[int]:
        opts = self.options
        if (select or opts.select) == "zscore":
            return (r > r.mean() + opts.z * r.std()).nonzero().squeeze(1).tolist()
        n = math.ceil(opts.m * len(r)) if opts.m < 1 else int(opts.m)
        n = min(n, len(r) - 1, int((r > 0).sum()))  # never a whole layer; score 0 carries nothing
        return torch.argsort(r, descending=True, stable=True)[:n].tolist() if n > 0 else []

    def _adaptive(self, model, layer, r, inputs, check) -> list[int]:
        """Binary search for the fewest top channels of ``layer`` reaching ``forget_target``:
        each trial zeroes in place and is undone (no copy of the model)."""
        order = self._select(r, "top_m")
        lo, hi = 1, len(order)
        if hi == 0:
            return []
        while lo < hi:
            mid = (lo + hi) // 2
            trial = EditRecord("trial")
            zero_components(model, {layer: order[:mid]}, True, trial)
            try:
                forgotten = self._forgotten(model, inputs, check) <= self.options.forget_target
            finally:
                trial.undo(model)
            hi, lo = (mid, lo) if forgotten else (hi, mid + 1)
        return order[:lo]

    def _finetune(self, model, inputs, record) -> None:
        """Fine-tune on the retained classes of ``data``, then re-zero: edits stay removed."""
        if not isinstance(inputs.data, Split):
            raise InputError("fine-tuning after discedit-u needs a Split as data")
        fit(
            model,
            inputs.data.subset(exclude=[inputs.forget_class]),
            self.options.finetune_epochs,
            lr=self.options.finetune_lr,
        )
        zero_components(
            model, {k: list(v) for k, v in record.changes.items()}, True, EditRecord("refit")
        )
