"""WitnessPrune / DisCEdit scorer: per channel, a lower bound on the total variation between
class-conditional distributions of a witness of the channel's map (ALGORITHMS.md §3).

score_j = min over comparisons of the bound, where a comparison is class k vs the rest
(``ovr_min``, the authors' code) or class k vs class k' (``pairwise_min``, the paper text), or
only class ``target_class`` vs the rest (class forgetting). Higher = more discriminative.
"""
from __future__ import annotations

import torch

from . import bounds
from ..capture import Request
from ..core.components import get_module, size_of
from ..core.errors import InputError
from ..capture.hookpoints import resolve
from ..core.plugin import Scorer
from ..stats.class_moments import FEATURES, ClassMoments, check_counts, feature_moments, unshift_poly

METHODS = ("fisher", "mpm", "robust", "raw")
AGGREGATIONS = ("ovr_min", "pairwise_min")


def _unshifted(mean, cov, features, shift):
    if features == "exp":
        return mean, cov
    if features == "linear":
        return mean + shift.unsqueeze(-1), cov
    return unshift_poly(mean, cov, shift)


def pair_bound(method: str, features: str, n_p, sums_p, n_q, sums_q, shift, radius: float = 0.05):
    """The witness bound between groups P and Q given their power sums [..., C, 6] and counts [...]."""
    (mp, cp), (mq, cq) = feature_moments(n_p, sums_p, features), feature_moments(n_q, sums_q, features)
    if method == "fisher":
        return bounds.fisher_bound(mp - mq, cp, cq)
    if method == "mpm":
        return bounds.mpm_bound(mp - mq, cp, cq)
    if method == "robust":
        (mp, cp), (mq, cq) = _unshifted(mp, cp, features, shift), _unshifted(mq, cq, features, shift)
        return bounds.robust_fisher_bound(mp, mq, cp, cq, radius)
    if features == "poly":
        raise InputError("the raw-moment bound needs a scalar witness: features='exp' or 'linear'")
    (mp, cp), (mq, cq) = _unshifted(mp, cp, features, shift), _unshifted(mq, cq, features, shift)
    mp, mq, vp, vq = mp[..., 0], mq[..., 0], cp[..., 0, 0], cq[..., 0, 0]
    return bounds.raw_moment_bound(mp, mq, vp + mp.square(), vq + mq.square())


def witness_scores(stat: ClassMoments, method: str = "fisher", features: str = "poly",
                   aggregation: str = "ovr_min", target_class: int | None = None,
                   radius: float = 0.05) -> torch.Tensor:
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
        t = pair_bound(method, features, stat.count[idx], sums[idx], n_rest[idx], s_rest[idx],
                       centre, radius)
    else:
        check_counts(stat.count)
        i, j = bounds.pairs(k)
        if target_class is not None:
            keep = (i == target_class) | (j == target_class)
            i, j = i[keep], j[keep]
        t = pair_bound(method, features, stat.count[i], sums[i], stat.count[j], sums[j], centre, radius)
    score = t.amin(0)
    return torch.where(stat.constant_channels(), torch.zeros_like(score), score)


class WitnessScorer(Scorer):
    """Options: ``method`` (fisher | mpm | robust | raw), ``features`` (poly = (s, s^2),
    linear = s, exp = exp(-gamma ||A||)), ``aggregation`` (ovr_min | pairwise_min), ``hook``
    (conv | bn | act | ln), ``gamma``, ``target_class`` (score one class vs the rest), ``radius``
    (robust Fisher's mean-uncertainty fraction)."""
    name = "witness"
    needs_data = True
    needs_labels = True
    defaults = {"method": "fisher", "features": "poly", "aggregation": "ovr_min", "hook": "conv",
                "gamma": 1.0, "target_class": None, "radius": 0.05}

    def __init__(self, **options):
        super().__init__(**options)  # the base class checks names against ``defaults``
        self._keys: dict[str, str] = {}

    def requests(self, model, targets, num_classes):
        reqs = []
        for path in targets:
            module, where = resolve(model, path, self.options["hook"])
            stat = ClassMoments(size_of(get_module(model, path)), num_classes, gamma=self.options["gamma"])
            reqs.append(Request(module, stat, where))
            self._keys[path] = reqs[-1].key
        return reqs

    def score(self, model, targets, stats, data=None, num_classes=None):
        o = self.options
        return {path: witness_scores(stats[self._keys[path]], o["method"], o["features"],
                                     o["aggregation"], o["target_class"], o["radius"]).float()
                for path in targets}
