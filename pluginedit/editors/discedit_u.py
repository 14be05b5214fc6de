"""DisCEdit-U (ALGORITHMS.md §3.5): forget a class by zeroing its most discriminative channels.
Statistics are recomputed on the partially edited model unit by unit.

A unit is the coupled channel group of a candidate conv (``discedit_groups``): a plain conv alone,
or every layer writing into a residual stream. Zeroing one conv of a residual block left the
class on the skip path (a narrow ResNet then needed ~30 channels and lost up to 17 points of
retained accuracy); zeroing the group zeroes the stream channel itself. A group channel scores the
max of its members' bounds. Edited channels have conv weight, conv bias and the following BN's
affine zeroed in every member, so they emit exactly 0 (no BN constant survives).
The groups of the last 4 convs are candidates (the paper: the last 8 of VGG-16, ResNet-56's
layer3). Where torch-pruning cannot trace the model, each conv is its own unit."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..capture import Split, head_layers
from ..core.batches import take_rows
from ..core.components import groups
from ..core.errors import InputError
from ..core.plugin import COUNT, FRACTION, NONNEGATIVE, POSITIVE, Editor, option
from ..core.record import EditRecord
from ..evaluate import class_accuracy
from .common.finetune import fit
from .discedit_groups import ChannelGroup, coupled_groups, group_scores, member_scores, single
from .mask import zero_components


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
    layers: list[str] | None = option(
        None, "conv layer paths whose coupled groups are edited (default: the last num_layers)"
    )
    num_layers: int = option(
        4,
        "the coupled groups of this many last conv layers are the units (adaptive: deepest "
        "first, stopping once the class is forgotten)",
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
    coupled: bool = option(
        True, "edit each candidate conv's coupled channel group (False: the conv alone)"
    )
    stream: bool = option(
        True, "also score a residual stream where it is read (its readers' inputs)"
    )
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
    """Per coupled group of the chosen convs, the raw-moment witness bound of each channel for the
    forgotten class vs the rest (max over the group's layers); the most discriminative channels
    are zeroed in every layer of the group. ``adaptive`` visits groups deepest first and stops
    once the class is forgotten on ``data``."""

    name = "discedit-u"
    kind = "forget"
    needs_data = True
    needs_labels = True
    uses_scores = False
    Options = DisCEditUOptions

    def apply(self, model, scores, inputs):
        opts, k = self.options, inputs.forget_class
        layers = opts.layers or conv_layers(model, inputs.example)[-opts.num_layers :]
        units = self._units(model, inputs.example, layers)
        record = self.record(
            "zeroed weight+bias+bn affine of every layer of each coupled group",
            info={
                "forget_class": k,
                "skipped": [],
                "groups": [list(g.members) for g in units],
            },
        )
        adaptive = opts.select == "adaptive"
        scored, check = (
            halves(inputs.data) if opts.check == "held-out" else (inputs.data, inputs.data)
        )
        for g in units:
            r = self._scores(model, g, scored, inputs)
            idx = self._adaptive(model, g, r, inputs, check) if adaptive else self._select(r)
            if not idx:  # guard: the authors' [-0:] slice would select every filter
                record.info["skipped"].append(g.root)
                continue
            zero_components(model, g.expand(idx), True, record)
            if adaptive and self._forgotten(model, inputs, check) <= opts.forget_target:
                break
        else:
            if adaptive:
                self._short_of_target(model, inputs, check, record, len(units))
        if opts.finetune_epochs:
            self._finetune(model, inputs, record)
        return record

    def _units(self, model, example, layers) -> list[ChannelGroup]:
        """The coupled groups of ``layers`` (the head's left out), deepest first when adaptive:
        ordered by their deepest member."""
        heads = set(head_layers(model, example))
        if self.options.coupled:
            units = coupled_groups(model, example, list(layers), skip=heads, traced=False)
        else:
            units = [single(model, p) for p in layers if p not in heads]
        if self.options.select == "adaptive":
            order = {p: i for i, p in enumerate(groups(model))}
            units.sort(key=lambda g: max(order[p] for p in g.members), reverse=True)
        return units

    def _scores(self, model, g: ChannelGroup, data, inputs) -> torch.Tensor:
        opts = self.options
        per_layer = member_scores(
            model,
            g,
            data,
            inputs.num_classes,
            opts.hook,
            opts.gamma,
            opts.max_samples,
            opts.batch_size,
            opts.active_only,
            opts.stream,
            method=opts.method,
            features=opts.features,
            aggregation="ovr_min",
            target_class=inputs.forget_class,
        )
        return group_scores(g, per_layer, "max").float()

    def _short_of_target(self, model, inputs, check, record, n_units: int) -> None:
        """Every candidate group used and the class not forgotten on the check data: say so."""
        left = self._forgotten(model, inputs, check)
        record.info["forgotten_accuracy"] = left
        if left > self.options.forget_target:
            warnings.warn(
                f"discedit-u: class {inputs.forget_class} still at {left:.1%} on the check data "
                f"(forget_target {self.options.forget_target:.1%}) after all {n_units} candidate "
                "channel groups; raise num_layers or m",
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

    def _adaptive(self, model, g: ChannelGroup, r, inputs, check) -> list[int]:
        """Binary search for the fewest top channels of group ``g`` reaching ``forget_target``:
        each trial zeroes in place and is undone (no copy of the model)."""
        order = self._select(r, "top_m")
        lo, hi = 1, len(order)
        if hi == 0:
            return []
        while lo < hi:
            mid = (lo + hi) // 2
            trial = EditRecord("trial")
            zero_components(model, g.expand(order[:mid]), True, trial)
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
