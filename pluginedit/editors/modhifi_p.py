"""ModHiFi-P (ALGORITHMS.md 4.5): structured pruning with least-squares compensation of every
consumer of a removed channel and BatchNorm recalibration, without fine-tuning."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from ..capture import default_targets, head_layers
from ..core.components import bn_of, transformer_units
from ..core.errors import EditError, InputError
from ..core.plugin import COUNT, NONNEGATIVE, RATIO, Editor, option
from ..core.scores import Scores
from ..graph.groups import count_ops_and_params, is_in
from ..graph.pruner import prune_by_scores
from ..linalg import DEFAULT_RIDGE, IllConditionedWarning
from ..scorers.fidelity import channel_scores, collect_grams
from ..scorers.run import score
from .common.bnrecal import recalibrate_bn
from .common.compensate import compensate
from .common.modhifi_transformer import prune_transformer
from .prune import check_leaves_channels


@dataclass(frozen=True)
class ModHiFiPOptions:
    ratio: float = option(
        0.5, "fraction of channels removed per layer (target='channels')", **RATIO
    )
    steps: int = option(
        1, "steps for target='channels' (one measured better: errors compound)", **COUNT
    )
    target: Literal["channels", "params", "macs"] = option(
        "channels", "what ``ratio`` / ``amount`` counts"
    )
    amount: float | None = option(
        None, "fraction of params / MACs to remove (default: ratio)", **RATIO
    )
    per_step: float = option(
        0.1, "fraction of channels per step when aiming at params / MACs", **RATIO
    )
    max_steps: int = option(40, "give up after this many steps", **COUNT)
    compensate: bool = option(True, "least-squares refit (delta*) of the consumers' kept inputs")
    recalibrate: bool = option(True, "re-estimate BatchNorm statistics after each step")
    ridge: float = option(DEFAULT_RIDGE, "relative ridge of the compensation solves", **NONNEGATIVE)
    conv_refit: Literal["full", "slice"] = option(
        "full", "conv delta*: full refit of the kept slices, or the paper's per-slice scale"
    )
    calib_samples: int = option(2048, "calibration samples per step", **COUNT)
    scorer: str = option("fidelity", "scorer for steps without given Scores")
    variant: Literal["centred", "uncentred", "fidelity", "alpha"] = option(
        "centred", "fidelity pair score"
    )
    reduce: Literal["mean", "max"] = option("mean", "fidelity channel score over consumers")
    global_pruning: bool = option(False, "rank channels across layers")
    heads: int = option(
        0, "transformers: attention heads removed per layer (ratio: FFN neurons)", **NONNEGATIVE
    )
    ignored: list[str] | None = option(None, "module paths kept whole")


_TRANSFORMER_OPTIONS = {"ratio", "heads", "compensate", "ridge", "calib_samples"}


class ModHiFiP(Editor):
    """Each step: input Grams on calibration data, channel scores (fidelity from the same
    Grams, or the given Scores for the first step), removal of the lowest channels with
    torch-pruning, delta* on each consumer just before its inputs go, BN recalibration."""

    name = "modhifi-p"
    kind = "prune"
    needs_data = True
    Options = ModHiFiPOptions

    def apply(self, model, scores, inputs):
        opts, example = self.options, inputs.example
        self._check_path(model)
        if transformer_units(model):
            return self._transformer(model, scores, inputs)
        macs0, params0 = count_ops_and_params(model, example)
        plan = self._plan()
        amount = opts.amount if opts.amount is not None else opts.ratio
        if not opts.global_pruning:
            layers = scores if scores is not None else default_targets(model, example)
            check_leaves_channels(model, set(layers) - self._kept_whole(model, inputs), plan[0])
        used = scores.scorer if scores is not None else opts.scorer
        totals = {"removed": {}, "steps": [], "ridges": [], "warned": 0}
        for i, step_ratio in enumerate(plan):
            self._step(model, scores if i == 0 else None, inputs, step_ratio, totals)
            macs, params = count_ops_and_params(model, example)
            if (
                opts.target != "channels"
                and 1 - (params / params0 if opts.target == "params" else macs / macs0) >= amount
            ):
                break
        else:
            if opts.target != "channels":
                raise EditError(
                    f"could not remove {amount:.0%} of the {opts.target} in {opts.max_steps} steps"
                )
        if totals["warned"]:
            warnings.warn(
                f"modhifi-p: {totals['warned']} compensation solve(s) met an ill-conditioned "
                "Gram; the ridge was grown there",
                IllConditionedWarning,
                stacklevel=2,
            )
        record = self.record(
            "removed (physical, torch-pruning)"
            + (" + delta*" if opts.compensate else "")
            + (" + BN recalibration" if opts.recalibrate else ""),
            scores,
            changes=totals["removed"],
            steps=totals["steps"],
        )
        record.scores = used
        record.info = {
            "params_before": params0,
            "params_after": params,
            "macs_before": macs0,
            "macs_after": macs,
            "steps_run": i + 1,
            "ill_conditioned_solves": totals["warned"],
            "max_ridge": max(totals["ridges"], default=0.0),
            "scores_used": used,
            "topk_reading": f"channel score = {opts.reduce} over consumers and outputs; "
            "lowest pruned"
            if used == "fidelity"
            else f"scores from {used!r}",
        }
        return record

    def _plan(self) -> list[float]:
        """The fraction of channels each step removes: equal steps that compound to ``ratio``,
        or ``per_step`` until the params / MACs target is met."""
        opts = self.options
        if opts.target == "channels":
            return [1 - (1 - opts.ratio) ** (1 / opts.steps)] * opts.steps
        return [opts.per_step] * opts.max_steps

    def _check_path(self, model) -> None:
        """An option the model's path cannot honour is an error, never silently ignored."""
        opts = self.options
        if not transformer_units(model):
            if opts.heads:
                raise InputError("option heads of modhifi-p removes attention heads: none here")
            return
        unread = sorted(
            f.name
            for f in dataclasses.fields(opts)
            if f.name not in _TRANSFORMER_OPTIONS and getattr(opts, f.name) != f.default
        )
        if unread:
            raise InputError(
                f"option(s) {unread} of modhifi-p apply to CNNs; on a transformer it reads only "
                f"{sorted(_TRANSFORMER_OPTIONS)} (FFN neurons and heads, fidelity-scored)"
            )

    def _transformer(self, model, scores, inputs):
        opts = self.options
        done = prune_transformer(
            model,
            scores,
            inputs,
            opts.ratio,
            opts.heads,
            opts.compensate,
            opts.ridge,
            opts.calib_samples,
        )
        record = self.record(
            "removed FFN neurons / attention heads (torch-pruning)"
            + (" + delta*" if opts.compensate else ""),
            scores,
            changes=done["changes"],
            steps=done["steps"],
            info=done["info"],
        )
        record.scores = scores.scorer if scores is not None else "fidelity"
        return record

    def _step(self, model, scores, inputs, ratio, totals) -> None:
        opts = self.options
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IllConditionedWarning)
            need_grams = opts.compensate or (scores is None and opts.scorer == "fidelity")
            grams = (
                collect_grams(model, inputs.data, max_samples=opts.calib_samples)
                if need_grams
                else {}
            )
            scores = scores if scores is not None else self._scores(model, inputs, grams)
            removed, steps = prune_by_scores(
                model,
                inputs.example,
                scores,
                ratio,
                self._kept_whole(model, inputs),
                opts.global_pruning,
                before_group=self._compensator(model, grams, totals["ridges"])
                if opts.compensate
                else None,
            )
        totals["warned"] += sum(issubclass(w.category, IllConditionedWarning) for w in caught)
        if not removed:
            raise EditError("modhifi-p removed no channel (nothing prunable, or ratio too small)")
        for k, v in removed.items():
            totals["removed"].setdefault(k, []).extend(v)
        totals["steps"] += steps
        if opts.recalibrate:
            recalibrate_bn(model, inputs.data, max_samples=opts.calib_samples)

    def _scores(self, model, inputs, grams) -> Scores:
        opts = self.options
        targets = default_targets(model, inputs.example)
        if opts.scorer == "fidelity":  # reuse the Grams: one pass over the data per step
            values = channel_scores(
                model, inputs.example, targets, grams, opts.variant, opts.reduce
            )
            return Scores(values, "fidelity", {"variant": opts.variant, "reduce": opts.reduce})
        return score(
            model,
            opts.scorer,
            data=inputs.data,
            targets=targets,
            max_samples=opts.calib_samples,
            example_inputs=inputs.example,
            num_classes=inputs.num_classes,
        )

    def _kept_whole(self, model, inputs) -> set[str]:
        return set(self.options.ignored or []) | set(head_layers(model, inputs.example))

    def _compensator(self, model, grams, ridges):
        """Before a group goes: refit each consumer with a Gram on its kept inputs."""
        bns = {c: model.get_submodule(b) for c, b in bn_of(model).items()}
        ridge, conv = self.options.ridge, self.options.conv_refit

        def before_group(group, paths):
            for dep, idxs in group:
                path = paths.get(dep.layer)
                if path in grams and is_in(dep.pruning_fn):
                    keep = torch.ones(dep.layer.weight.shape[1], dtype=torch.bool)
                    keep[torch.as_tensor(idxs, dtype=torch.long)] = False
                    ridges.append(
                        compensate(
                            dep.layer, grams[path], keep, bns.get(path), ridge=ridge, conv=conv
                        )
                    )

        return before_group
