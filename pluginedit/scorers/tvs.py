"""TVSPrune scorer: per channel, a Gaussian Hellinger lower bound on the total variation between
class-conditional distributions of the channel's whole map, min over class pairs (§2.3).

Scores are -log BC (the bound is 1 - exp(-score), see ``bounds``): the same ranking without
saturating at 1.0. Forms: ``iso`` (one variance per layer: ranks by ||mu_k - mu_k'|| exactly
as the authors' code), ``diag`` (per-pixel, per-class variances), ``full`` (full covariance,
for maps of at most ``max_full`` pixels; larger maps fall back to ``diag``, noted in ``info``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..capture import Request
from ..capture.hookpoints import resolve_auto
from ..core.components import get_module, size_of
from ..core.errors import InputError
from ..core.plugin import NONNEGATIVE, Scorer, option
from ..stats.class_moments import ClassMaps, check_counts
from . import bounds

FORMS = ("iso", "diag", "full")


def _groups(maps: ClassMaps, aggregation: str):
    """(mean, var, cov-or-None) of the two sides of every comparison, [P, C, L(, L)]."""
    n, mu, var = maps.count, maps.means(), maps.variances()
    cov = maps.covariances() if maps.full else None
    if aggregation == "pairwise_min":
        i, j = bounds.pairs(maps.num_classes)
        pick = lambda t: (t[i], t[j]) if t is not None else (None, None)  # noqa: E731
        return pick(mu), pick(var), pick(cov)
    # class vs rest: the rest is the mixture of the other classes (moments from totals)
    tot = n.sum()
    rn = (tot - n).reshape(-1, 1, 1)
    s1 = maps.sums.sum(0, keepdim=True) - maps.sums
    s2 = maps.squares.sum(0, keepdim=True) - maps.squares
    rmu = s1 / rn
    rvar = (s2 / rn - rmu.square()).clamp_min(0)
    rcov = None
    if maps.full:
        rcov = (maps.outer.sum(0, keepdim=True) - maps.outer) / rn.unsqueeze(-1) - rmu.unsqueeze(
            3
        ) * rmu.unsqueeze(2)
    return (mu, rmu), (var, rvar), (cov, rcov)


def tvs_scores(
    maps: ClassMaps, form: str = "iso", aggregation: str = "pairwise_min"
) -> torch.Tensor:
    """[C] min over comparisons of -log BC from one layer's ClassMaps."""
    if form not in FORMS:
        raise InputError(f"unknown TVS form {form!r}; known: {FORMS}")
    if aggregation not in ("ovr_min", "pairwise_min"):
        raise InputError(f"unknown aggregation {aggregation!r}")
    check_counts(maps.count)
    if form == "iso":
        # one variance per layer, pooled over classes, channels and pixels (code parity); the
        # squared mean distances of every comparison from one Gram per channel, no pair loop
        sigma2 = maps.pooled_variance()
        if sigma2 <= 0:
            return torch.zeros(maps.num_channels, dtype=torch.float64)
        dists = maps.mean_sq_dists(aggregation)
        return bounds.neglog_bc_iso(dists, sigma2, sigma2, maps.sums.shape[-1]).amin(0)
    (mp, mq), (vp, vq), (cp, cq) = _groups(maps, aggregation)
    if form == "diag":
        neglog = bounds.neglog_bc_diag(mp, vp, mq, vq)
    else:
        neglog = bounds.neglog_bc_full(mp, cp, mq, cq)
    return neglog.amin(0)


@dataclass(frozen=True)
class TVSOptions:
    form: Literal["iso", "diag", "full"] = option(
        "iso", "Gaussian form: one pooled variance (authors' code), per-pixel, or full covariance"
    )
    aggregation: Literal["pairwise_min", "ovr_min"] = option(
        "pairwise_min", "min over class pairs, or over each class vs the rest"
    )
    hook: Literal["conv", "bn", "act", "ln"] = option(
        "bn", "observe the layer's output here (falls back to the conv output)"
    )
    max_full: int = option(64, "largest map (pixels) that keeps full covariances", **NONNEGATIVE)


class TVSScorer(Scorer):
    """TVSPrune. Scores.meta gets each layer's LDIFF (reconstructed, §2.5) and a note per layer
    whose map was too large for the full form."""

    name = "tvs"
    needs_data = True
    needs_labels = True
    Options = TVSOptions

    def requests(self, model, inputs):
        opts = self.options
        order = (opts.hook, "conv") if opts.hook != "conv" else ("conv",)
        reqs = {}
        for path in inputs.targets:
            module, where = resolve_auto(model, path, order)
            stat = ClassMaps(
                size_of(get_module(model, path)),
                inputs.num_classes,
                full=opts.form == "full",
                max_full=opts.max_full,
                pixel_squares=opts.form != "iso",  # iso pools the variance: squares per channel
            )
            reqs[path] = Request(module, stat, where)
        return reqs

    def score(self, model, stats, inputs):
        out, ldiff, notes = {}, {}, {}
        for path in inputs.targets:
            maps, form = stats[path], self.options.form
            if form == "full" and not maps.full:
                notes[path] = f"map of {maps.sums.shape[-1]} pixels > max_full: diag form used"
                form = "diag"
            out[path] = tvs_scores(maps, form, self.options.aggregation).float()
            ldiff[path] = bounds.ldiff(out[path])
        return out, {"ldiff": ldiff, "notes": notes}
