"""TVSPrune scorer: per channel, a Gaussian Hellinger lower bound on the total variation between
class-conditional distributions of the channel's whole map, min over class pairs (§2.3).

Scores are -log BC (the bound is 1 - exp(-score), see ``bounds``): the same ranking without
saturating at 1.0. Forms: ``iso`` (one variance per layer: ranks by ||mu_k - mu_k'|| exactly
as the authors' code), ``diag`` (per-pixel, per-class variances), ``full`` (full covariance,
for maps of at most ``max_full`` pixels; larger maps fall back to ``diag``, noted in ``info``).
"""
from __future__ import annotations

import torch

from . import bounds
from ..capture import Request
from ..core.components import get_module, size_of
from ..core.errors import InputError
from ..capture.hookpoints import resolve_auto
from ..core.plugin import Scorer
from ..stats.class_moments import ClassMaps, check_counts

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
        rcov = (maps.outer.sum(0, keepdim=True) - maps.outer) / rn.unsqueeze(-1) - rmu.unsqueeze(3) * rmu.unsqueeze(2)
    return (mu, rmu), (var, rvar), (cov, rcov)


def tvs_scores(maps: ClassMaps, form: str = "iso", aggregation: str = "pairwise_min") -> torch.Tensor:
    """[C] min over comparisons of -log BC from one layer's ClassMaps."""
    if form not in FORMS:
        raise InputError(f"unknown TVS form {form!r}; known: {FORMS}")
    if aggregation not in ("ovr_min", "pairwise_min"):
        raise InputError(f"unknown aggregation {aggregation!r}")
    check_counts(maps.count)
    (mp, mq), (vp, vq), (cp, cq) = _groups(maps, aggregation)
    if form == "iso":
        # one variance per layer, pooled over classes, channels and pixels (code parity)
        sigma2 = maps.variances().mean()
        if sigma2 <= 0:
            return torch.zeros(maps.num_channels, dtype=torch.float64)
        dist2 = (mp - mq).square().sum(-1)
        neglog = dist2 / (8 * sigma2)
    elif form == "diag":
        neglog = bounds.neglog_bc_diag(mp, vp, mq, vq)
    else:
        neglog = bounds.neglog_bc_full(mp, cp, mq, cq)
    return neglog.amin(0)


class TVSScorer(Scorer):
    """Options: ``form`` (iso | diag | full), ``aggregation`` (pairwise_min | ovr_min), ``hook``
    (bn by default, as the authors' code; layers without one use their own output), ``max_full``.
    After ``score``, ``self.ldiff`` holds each layer's LDIFF (reconstructed, §2.5)."""
    name = "tvs"
    needs_data = True
    needs_labels = True
    defaults = {"form": "iso", "aggregation": "pairwise_min", "hook": "bn", "max_full": 64}

    def __init__(self, **options):
        super().__init__(**options)  # the base class checks names against ``defaults``
        self._keys, self.ldiff, self.info = {}, {}, {}

    def requests(self, model, targets, num_classes):
        order = (self.options["hook"], "conv") if self.options["hook"] != "conv" else ("conv",)
        full = self.options["form"] == "full"
        reqs = []
        for path in targets:
            module, where = resolve_auto(model, path, order)
            stat = ClassMaps(size_of(get_module(model, path)), num_classes, full=full,
                             max_full=self.options["max_full"])
            reqs.append(Request(module, stat, where))
            self._keys[path] = reqs[-1].key
        return reqs

    def score(self, model, targets, stats, data=None, num_classes=None):
        out = {}
        for path in targets:
            maps = stats[self._keys[path]]
            form = self.options["form"]
            if form == "full" and not maps.full:
                self.info[path] = f"map of {maps.sums.shape[-1]} pixels > max_full: diag form used"
                form = "diag"
            out[path] = tvs_scores(maps, form, self.options["aggregation"]).float()
            self.ldiff[path] = bounds.ldiff(out[path])
        return out
