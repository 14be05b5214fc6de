"""COAR-Edit (ALGORITHMS.md 5.4): ablate the components whose attributions separate a target
behaviour from a reference behaviour.

Attributions of the target and reference examples come from one COAR estimation (shared masks);
each component's Welch t-score contrasts them. To lower the target margin (forget a class) the
top-scored components are ablated, to raise it (fix a misclassification) the bottom-scored ones.
Components are ablated greedily in that order, the goal checked after each; a component whose
ablation costs more than ``max_drop`` of accuracy on held-back examples of ``data`` (not the
targets) is put back and skipped. The edit stops at the first goal reached and fails (model
untouched) when ``budget`` candidates do not reach it. Ablation is COAR's: the weight slice is
zeroed, bias and BatchNorm untouched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..capture import default_targets, model_device
from ..core.errors import InputError
from ..core.plugin import COUNT, FRACTION, NONNEGATIVE, RATIO, SEED, Editor, option
from ..core.progress import bar
from ..core.record import EditRecord
from ..evaluate import predictions
from ..scorers.coar import estimate, labelled
from .mask import zero_components


def welch_t(target: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per component [C]: (mean_T w - mean_R w) / sqrt(sd_T^2 / |T| + sd_R^2 / |R|), population
    standard deviations; ``target`` [C, T], ``reference`` [C, R]."""
    if target.shape[1] < 1 or reference.shape[1] < 1:
        raise InputError("the Welch t-score needs at least one target and one reference example")
    var = (
        target.var(1, correction=0) / target.shape[1]
        + reference.var(1, correction=0) / reference.shape[1]
    )
    return (target.mean(1) - reference.mean(1)) / var.sqrt().clamp_min(1e-12)


@dataclass(frozen=True)
class _AttributionOptions:
    budget: int = option(100, "most candidate components tried, in score order", **COUNT)
    references: int = option(50, "reference examples attributed (the behaviour to keep)", **COUNT)
    max_drop: float = option(
        0.01, "largest accuracy drop on the guard examples the ablations may cause", **FRACTION
    )
    guard_samples: int = option(
        1024, "examples of data (not targets) the guard measures accuracy on", **COUNT
    )
    layers: list[str] | None = option(
        None, "layer paths whose components may be ablated (default: all but the head)"
    )
    masks: int = option(500, "COAR masks (0: the chord prior alone)", **NONNEGATIVE)
    alpha: float = option(0.05, "fraction of components ablated per mask", **RATIO)
    estimator: Literal["ols", "ridge", "diffmeans"] = option("ridge", "COAR estimator")
    prior: Literal["none", "grad", "chord"] = option("chord", "COAR prior")
    prior_points: int = option(80, "backward passes of the prior", **NONNEGATIVE)
    seed: int = option(0, "mask and reference-sampling seed", **SEED)
    chunk: int = option(16, "masks per forward pass", **COUNT)


class _CoarEditor(Editor):
    needs_data = True
    needs_labels = True
    uses_scores = False

    def _order(self, model, inputs, target, reference, lower: bool):
        """Components (path, index) in ablation order, by the Welch t of target vs reference."""
        opts = self.options
        paths = opts.layers or default_targets(model, inputs.example, inputs.num_classes)
        (xt, yt), (xr, yr) = target, reference
        att = estimate(
            model,
            torch.cat([xt, xr]),
            torch.cat([yt, yr]),
            paths,
            opts.masks,
            opts.alpha,
            opts.seed,
            opts.estimator,
            opts.prior,
            opts.prior_points,
            chunk=opts.chunk,
        )
        t = welch_t(att.w[:, : len(yt)], att.w[:, len(yt) :])
        order = torch.argsort(t, descending=lower, stable=True)[: opts.budget]
        owner = [(p, i) for p, _, w in att.slices for i in range(w)]
        return [owner[c] for c in order.tolist()], att.info

    def _greedy(self, model, order, goal, guard, record) -> int:
        """Ablate in ``order`` until ``goal(model)``, skipping any component that drops the
        ``guard(model)`` accuracy by more than max_drop; the number of components ablated."""
        opts = self.options
        floor = guard(model) - opts.max_drop
        for path, i in bar(order, desc=f"{self.name} ablations"):
            trial = EditRecord("trial")
            zero_components(model, {path: [i]}, False, trial, bias=False)
            if guard(model) < floor:
                trial.undo(model)
                record.info["skipped"] += 1
                continue
            record.absorb(trial)
            if goal(model):
                record.info["goal_reached"] = True  # else it raises: the model is unchanged
                return record.num_changed()
        raise InputError(
            f"{self.name}: the goal was not reached within budget={opts.budget} candidates "
            f"({record.info['skipped']} skipped by the max_drop={opts.max_drop} guard); "
            "raise budget or max_drop; the model is unchanged"
        )


def _accuracy_on(x, y):
    def acc(model) -> float:
        return float((predictions(model, x) == y).float().mean())

    return acc


def _pick(idx: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return idx[torch.randperm(len(idx), generator=g)[:n]]


@dataclass(frozen=True)
class CoarEditOptions(_AttributionOptions):
    target: list[int] = option([], "indices into data of the target examples")
    direction: Literal["raise", "lower"] = option(
        "raise", "raise the target margin (fix a misclassification) or lower it (induce an error)"
    )


class CoarEdit(_CoarEditor):
    """Fix (``raise``) or break (``lower``) the predictions of chosen examples of ``data`` by
    ablating the components most specific to them, keeping the other examples' behaviour."""

    name = "coar-edit"
    kind = "rectify"
    Options = CoarEditOptions

    def apply(self, model, scores, inputs):
        opts = self.options
        x, y = labelled(model, inputs.data, inputs.num_classes)
        index = torch.as_tensor(opts.target, dtype=torch.long)
        if index.numel() == 0 or index.min() < 0 or index.max() >= len(y):
            raise InputError(
                f"coar-edit needs target indices into data (0 .. {len(y) - 1}), got {opts.target}"
            )
        rest = torch.ones(len(y), dtype=torch.bool)
        rest[index] = False
        rest = rest.nonzero().squeeze(1)
        if len(rest) == 0:
            raise InputError("coar-edit needs reference examples in data besides the targets")
        g = torch.Generator().manual_seed(opts.seed)
        ref, held = _pick(rest, opts.references, g), _pick(rest, opts.guard_samples, g)
        want_correct = opts.direction == "raise"
        dev = model_device(model)
        xt, yt = x[index].to(dev), y[index].to(dev)

        def goal(m):
            return bool(((predictions(m, xt) == yt) == want_correct).all())

        if goal(model):
            raise InputError(
                f"coar-edit: the target examples are already "
                f"{'correctly classified' if want_correct else 'misclassified'}; "
                f"nothing to {opts.direction}"
            )
        order, info = self._order(
            model, inputs, (x[index], y[index]), (x[ref], y[ref]), not want_correct
        )
        record = self.record(
            "zeroed weight slices (COAR ablation)",
            info={"target": list(opts.target), "skipped": 0, "coar": info},
        )
        record.info["ablated"] = self._greedy(
            model, order, goal, _accuracy_on(x[held].to(dev), y[held].to(dev)), record
        )
        return record


@dataclass(frozen=True)
class CoarForgetOptions(_AttributionOptions):
    budget: int = option(300, "most candidate components tried, in score order", **COUNT)
    max_drop: float = option(
        0.01,
        "largest accuracy drop on retained guard examples a kept ablation may cause",
        **FRACTION,
    )
    targets: int = option(50, "examples of the forgotten class attributed", **COUNT)
    forget_target: float = option(0.02, "forgotten-class accuracy on data to reach", **FRACTION)


class CoarForget(_CoarEditor):
    """Forget a class: ablate the components that raise its margin more than the other classes'
    (top Welch t), until its accuracy on ``data`` falls to ``forget_target``."""

    name = "coar-forget"
    kind = "forget"
    Options = CoarForgetOptions

    def apply(self, model, scores, inputs):
        opts, k = self.options, inputs.forget_class
        x, y = labelled(model, inputs.data, inputs.num_classes)
        g = torch.Generator().manual_seed(opts.seed)
        mine, rest = (y == k).nonzero().squeeze(1), (y != k).nonzero().squeeze(1)
        if len(mine) == 0 or len(rest) == 0:
            raise InputError(
                f"coar-forget needs examples of class {k} and of other classes in data"
            )
        t_idx, r_idx, held = (
            _pick(mine, opts.targets, g),
            _pick(rest, opts.references, g),
            _pick(rest, opts.guard_samples, g),
        )
        dev = model_device(model)
        xk = x[mine].to(dev)

        def goal(m):
            return float((predictions(m, xk) == k).float().mean()) <= opts.forget_target

        order, info = self._order(model, inputs, (x[t_idx], y[t_idx]), (x[r_idx], y[r_idx]), True)
        record = self.record(
            "zeroed weight slices (COAR ablation)",
            info={"forget_class": k, "skipped": 0, "coar": info},
        )
        record.info["ablated"] = self._greedy(
            model, order, goal, _accuracy_on(x[held].to(dev), y[held].to(dev)), record
        )
        return record
