"""DisCEdit-SP (ALGORITHMS.md §3.4): structured pruning by the witness bound, coupled channel group
by group (first to last), with statistics recomputed on the partially pruned model; removal
through torch-pruning, then BatchNorm recalibration.

The unit is a coupled group (``discedit_groups``): a plain layer alone, or every layer writing
into a residual stream, so the stream's channels are pruned too (pruning only the uncoupled
convs left a ResNet's stream whole: 28 % of parameters at ratio 0.3 where group pruning removes
about half). A group channel scores the max of its members' witness bounds."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..capture import head_layers
from ..core.components import groups
from ..core.errors import InputError
from ..core.plugin import COUNT, FRACTION, POSITIVE, RATIO, Editor, option
from ..core.record import EditRecord
from ..evaluate import accuracy
from ..graph.pruner import remove_channels
from .common.bnrecal import recalibrate_bn
from .discedit_groups import ChannelGroup, coupled_groups, group_scores, member_scores
from .mask import zero_components


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class DisCEditSPOptions:
    ratio: float = option(
        0.3, "uniform: fraction of each coupled group's channels removed", **RATIO
    )
    allocation: Literal["uniform", "threshold"] = option(
        "uniform", "the ratio lowest per layer, or TVSPrune's threshold s/max <= rho mean"
    )
    rho: float = option(0.5, "threshold allocation: the starting rho", **POSITIVE)
    rho_step: float = option(
        0.025, "accuracy-floor loop: rho shrinks by this when a round fails", **POSITIVE
    )
    acc_floor: float | None = option(
        None, "threshold: repeat rounds while accuracy on eval_data stays >= this", **FRACTION
    )
    eval_data: Any = option(None, "held-out Split for the accuracy floor")
    max_iter: int = option(10, "accuracy-floor loop: at most this many rounds", **COUNT)
    target_sparsity: float | None = option(
        None, "stop once this fraction of parameters would be removed", **RATIO
    )
    method: Literal["fisher", "mpm", "robust", "raw"] = option("fisher", "witness bound")
    features: Literal["poly", "linear", "exp"] = option("poly", "witness features")
    aggregation: Literal["ovr_min", "pairwise_min"] = option("ovr_min", "min over comparisons")
    hook: Literal["auto", "conv", "bn", "act", "ln"] = option("conv", "where channels are observed")
    gamma: float = option(1.0, "scale of the exp witness", **POSITIVE)
    layers: list[str] | None = option(
        None,
        "layer paths whose coupled groups are pruned (default: every conv/linear but the head)",
    )
    reduce: Literal["max", "mean"] = option(
        "max", "a group channel's score from its layers' bounds (max: still a TV lower bound)"
    )
    recalibrate: bool = option(True, "re-estimate BatchNorm statistics on data afterwards")
    stream: bool = option(
        True, "also score a residual stream where it is read (its readers' inputs)"
    )
    max_samples: int = option(2048, "samples per statistic", **COUNT)
    batch_size: int = option(256, "batch size of the passes", **COUNT)
    physical: bool = option(True, "remove the channels with torch-pruning (else keep them zeroed)")

    def __post_init__(self):
        if self.acc_floor is not None and self.eval_data is None:
            raise InputError(
                "the accuracy-floor loop (acc_floor) needs eval_data (a held-out Split)"
            )


class DisCEditSP(Editor):
    """Witness-bound pruning, first coupled group to last, on the model pruned so far."""

    name = "discedit-sp"
    kind = "prune"
    needs_data = True
    needs_labels = True
    uses_scores = False
    Options = DisCEditSPOptions

    def options_dict(self) -> dict:
        return {k: v for k, v in super().options_dict().items() if k != "eval_data"}

    def apply(self, model, scores, inputs):
        opts, example = self.options, inputs.example
        units = self._groups(model, example)
        before = _params(model)
        record = self.record(
            "zeroed weight+bias+bn affine of every layer of each coupled group"
            + (", then removed (torch-pruning)" if opts.physical else "")
            + (", BN recalibrated" if opts.recalibrate else ""),
            info={
                "layers": [p for g in units for p in g.members],
                "groups": [list(g.members) for g in units],
                "params_before": before,
            },
        )
        if opts.allocation == "threshold" and opts.acc_floor is not None:
            masks, info = self._iterate(model, units, inputs)
            record.info.update(info)
            by_root = {g.root: g for g in units}
            for root, idx in masks.items():
                zero_components(model, by_root[root].expand(idx), True, record)
        else:  # zeroed in place as it goes, the originals saved in ``record``
            masks = self._one_pass(model, units, inputs, opts.rho, record)
        if opts.physical:
            record.steps = remove_channels(model, example, masks)
            record.saved.clear()  # a physical removal cannot be undone by restoring tensors
        if opts.recalibrate:
            self._recalibrate(model, inputs.data, record)
        record.info["params_after"] = _params(model)
        record.info["fraction_removed"] = 1 - record.info["params_after"] / before
        return record

    def _groups(self, model, example) -> list[ChannelGroup]:
        heads = set(head_layers(model, example))
        layers = self.options.layers or [p for p in groups(model) if p not in heads]
        return coupled_groups(model, example, layers, skip=heads)

    def _recalibrate(self, model, data, record) -> None:
        """BN statistics of the pruned model (the removed channels shifted every later layer's
        input); a masking edit keeps the old buffers in ``record`` so undo restores them."""
        if not self.options.physical:
            for name, buf in model.named_buffers():
                if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                    record.saved.setdefault(name, buf.detach().clone())
        opts = self.options
        recalibrate_bn(model, data, max_samples=opts.max_samples, batch_size=opts.batch_size)

    def _one_pass(self, model, units, inputs, rho, record=None) -> dict[str, list[int]]:
        """Zero channels group by group on ``model`` (statistics after earlier groups' edits),
        the originals saved in ``record``; returns {group root: root channels}."""
        opts, masks = self.options, {}
        for g in units:
            per_layer = member_scores(
                model,
                g,
                inputs.data,
                inputs.num_classes,
                opts.hook,
                opts.gamma,
                opts.max_samples,
                opts.batch_size,
                False,
                opts.stream,
                method=opts.method,
                features=opts.features,
                aggregation=opts.aggregation,
            )
            idx = self._choose(group_scores(g, per_layer, opts.reduce), rho)
            if idx:
                zero_components(model, g.expand(idx), True, record or EditRecord("step"))
                masks[g.root] = idx
        return masks

    def _choose(self, r: torch.Tensor, rho: float) -> list[int]:
        if self.options.allocation == "uniform":
            return torch.argsort(r, stable=True)[: int(self.options.ratio * len(r))].tolist()
        top = r.max()
        rn = r / top if top > 0 else torch.zeros_like(r)
        drop = (rn <= rho * rn.mean()).nonzero().squeeze(1).tolist()
        if len(drop) >= len(r):  # keep the best channel: never empty a layer
            drop.remove(int(r.argmax()))
        return drop

    def _iterate(self, model, units, inputs):
        """IterTVSPrune's loop with a max-iteration and a target-sparsity stop; each round's
        accuracy is measured after the BN recalibration the final model gets."""
        opts, rho = self.options, self.options.rho
        work, accepted, history = copy.deepcopy(model), {}, []
        for _ in range(opts.max_iter):
            if rho <= 0:
                break
            cand = copy.deepcopy(work)
            masks = self._one_pass(cand, units, inputs, rho)
            if opts.recalibrate:
                recalibrate_bn(cand, inputs.data, opts.max_samples, opts.batch_size)
            acc = accuracy(cand, opts.eval_data, inputs.num_classes)[0]
            merged = {
                k: set(accepted.get(k, ())) | set(masks.get(k, ()))
                for k in set(accepted) | set(masks)
            }
            removed = sum(len(v) for v in merged.values())
            history.append({"rho": rho, "accuracy": acc, "channels_zeroed": removed})
            if acc >= opts.acc_floor:
                grew = removed > sum(len(v) for v in accepted.values())
                work, accepted = cand, merged
                if not grew or (
                    opts.target_sparsity
                    and self._sparsity(model, inputs.example, accepted) >= opts.target_sparsity
                ):
                    break
            else:
                rho -= opts.rho_step
        return {k: sorted(v) for k, v in accepted.items()}, {"rounds": history}

    @staticmethod
    def _sparsity(model, example, masks) -> float:
        """Fraction of parameters removed if ``masks`` (group roots) were removed (measured on a
        pruned copy, traced with the model's own example input, whatever its size)."""
        trial = copy.deepcopy(model)
        remove_channels(trial, example, {k: sorted(v) for k, v in masks.items()})
        return 1 - _params(trial) / _params(model)
