"""WitnessPrune / DisCEdit scorer: per channel, a lower bound on the total variation between
class-conditional distributions of a witness of the channel's map (ALGORITHMS.md §3).

score_j = min over comparisons of the bound, where a comparison is class k vs the rest
(``ovr_min``, the authors' code) or class k vs class k' (``pairwise_min``, the paper text), or
only class ``target_class`` vs the rest (class forgetting). Higher = more discriminative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..capture import Request
from ..capture.hookpoints import resolve
from ..core.components import get_module, size_of
from ..core.errors import InputError
from ..core.plugin import NONNEGATIVE, POSITIVE, Scorer, option
from ..stats.class_moments import (
    FEATURES,
    ClassMoments,
    check_counts,
    feature_moments,
    unshift_poly,
)
from . import bounds

METHODS = ("fisher", "mpm", "robust", "raw")
AGGREGATIONS = ("ovr_min", "pairwise_min")


def _unshifted(mean, cov, features, shift):
    if features == "exp":
        return mean, cov
    if features == "linear":
        return mean + shift.unsqueeze(-1), cov
    return unshift_poly(mean, cov, shift)


def pair_bound(method: str, features: str, n_p, sums_p, n_q, sums_q, shift, radius: float = 0.05):
    """The witness bound between groups P and Q given their power sums [..., C, 6] and counts
    [...]."""
    (mp, cp), (mq, cq) = (
        feature_moments(n_p, sums_p, features),
        feature_moments(n_q, sums_q, features),
    )
    if method == "fisher":
        return bounds.fisher_bound(mp - mq, cp, cq)
    if method == "mpm":
        return bounds.mpm_bound(mp - mq, cp, cq)
    if method == "robust":
        (mp, cp), (mq, cq) = (
            _unshifted(mp, cp, features, shift),
            _unshifted(mq, cq, features, shift),
        )
        return bounds.robust_fisher_bound(mp, mq, cp, cq, radius)
    if features == "poly":
        raise InputError("the raw-moment bound needs a scalar witness: features='exp' or 'linear'")
    (mp, cp), (mq, cq) = _unshifted(mp, cp, features, shift), _unshifted(mq, cq, features, shift)
    mp, mq, vp, vq = mp[..., 0], mq[..., 0], cp[..., 0, 0], cq[..., 0, 0]
    return bounds.raw_moment_bound(mp, mq, vp + mp.square(), vq + mq.square())


def witness_scores(
    stat: ClassMoments,
    method: str = "fisher",
    features: str = "poly",
    aggregation: str = "ovr_min",
    target_class: int | None = None,
    radius: float = 0.05,
) -> torch.Tensor:
    """[C] scores from one layer's ClassMoments; constant channels score 0."""
    if method not in METHODS:
        raise InputError(f"unknown witness method {method!r}; known: {METHODS}")
    if features not in FEATURES:
        raise InputError(f"unknown witness features {features!r}; known: {FEATURES}")
    if aggregation not in AGGREGATIONS:
        raise InputError(f"unknown aggregation {aggregation!r}; known: {AGGREGATIONS}")
    k = stat.num_classes
    if k < 2:
        raise InputError("witness scores need at least two classes")
    if target_class is not None and not 0 <= target_class < k:
        raise InputError(f"target_class {target_class} out of range [0, {k - 1}]")
    sums, centre = stat.centred()
    if aggregation == "ovr_min":
        classes = range(k) if target_class is None else [target_class]
        check_counts(stat.count, classes)
        n_rest, s_rest = stat.rest(sums)
        check_counts(n_rest, classes)
        idx = torch.as_tensor(list(classes))
        t = pair_bound(
            method, features, stat.count[idx], sums[idx], n_rest[idx], s_rest[idx], centre, radius
        )
    else:
        check_counts(stat.count)
        i, j = bounds.pairs(k)
        if target_class is not None:
            keep = (i == target_class) | (j == target_class)
            i, j = i[keep], j[keep]
        t = pair_bound(
            method, features, stat.count[i], sums[i], stat.count[j], sums[j], centre, radius
        )
    score = t.amin(0)
    return torch.where(stat.constant_channels(), torch.zeros_like(score), score)


@dataclass(frozen=True)
class WitnessOptions:
    method: Literal["fisher", "mpm", "robust", "raw"] = option(
        "fisher", "witness: Fisher, minimax probability machine, robust Fisher or raw moments"
    )
    features: Literal["poly", "linear", "exp"] = option(
        "poly", "witness features: (s, s^2), s, or exp(-gamma ||A||)"
    )
    aggregation: Literal["ovr_min", "pairwise_min"] = option(
        "ovr_min", "min over each class vs the rest, or over class pairs"
    )
    hook: Literal["conv", "bn", "act", "ln"] = option("conv", "observe the layer's output here")
    gamma: float = option(1.0, "scale of the exp witness", **POSITIVE)
    target_class: int | None = option(
        None, "score one class vs the rest (forgetting)", **NONNEGATIVE
    )
    radius: float = option(0.05, "robust Fisher's mean-uncertainty fraction", **NONNEGATIVE)


class WitnessScorer(Scorer):
    """WitnessPrune / DisCEdit witness-function bounds on one ClassMoments per layer."""

    name = "witness"
    needs_data = True
    needs_labels = True
    Options = WitnessOptions

    def requests(self, model, inputs):
        reqs = {}
        for path in inputs.targets:
            module, where = resolve(model, path, self.options.hook)
            stat = ClassMoments(
                size_of(get_module(model, path)), inputs.num_classes, gamma=self.options.gamma
            )
            reqs[path] = Request(module, stat, where)
        return reqs

    def score(self, model, stats, inputs):
        opts = self.options
        return {
            path: witness_scores(
                stats[path],
                opts.method,
                opts.features,
                opts.aggregation,
                opts.target_class,
                opts.radius,
            ).float()
            for path in inputs.targets
        }
