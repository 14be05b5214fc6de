"""Label-segmented statistics for the distributional scorers (ALGORITHMS.md §1 S1, S2).

``ClassMoments``: per class, sums of the witness features (s, s^2, s^3, s^4, e, e^2) of every
channel, s the per-example spatial sum and e = exp(-gamma ||A||_F). ``ClassMaps``: per class,
sums (and squares, optionally outer products) of whole activation maps. Both keep true sample
counts; "rest of the classes" is total minus class, so no extra pass is needed."""

from __future__ import annotations

import math
import os
from math import comb

import torch

from .. import ops
from ..core.errors import InputError
from ..ops._common import _as_nc_l
from ..ops.class_maps import BLOCK
from .base import Statistic, check_activations, check_labels

FEATURES = ("linear", "poly", "exp")  # phi = s | (s, s^2) | e


def check_counts(counts: torch.Tensor, classes=None, min_count: int = 2) -> None:
    """Every class used needs >= ``min_count`` samples: a variance of one sample is not a
    variance."""
    classes = range(len(counts)) if classes is None else classes
    absent = [int(k) for k in classes if counts[k] == 0]
    if absent:
        raise InputError(
            f"class(es) {absent} have no samples in the data: their distribution is "
            "undefined; pass data with every class or restrict num_classes"
        )
    few = [int(k) for k in classes if counts[k] < min_count]
    if few:
        raise InputError(
            f"class(es) {few} have fewer than {min_count} samples: "
            "class-conditional variances need at least two"
        )


def _labels(x, labels, num_classes):
    if labels is None:
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    return check_labels(labels, num_classes, x.shape[0]).to(x.device)


def feature_moments(n: torch.Tensor, sums: torch.Tensor, features: str):
    """Mean [..., C, d] and covariance [..., C, d, d] of phi from power sums [..., C, 6] over n
    samples (population moments). s-features are in the statistic's shifted coordinates
    s' = s - shift; linear witness bounds are invariant to that shift."""
    if features not in FEATURES:
        raise InputError(f"unknown witness features {features!r}; known: {FEATURES}")
    m = sums / n.clamp_min(1).reshape(*n.shape, *([1] * (sums.ndim - n.ndim)))
    if features == "exp":
        mean = m[..., 4:5]
        return mean, (m[..., 5] - m[..., 4].square()).clamp_min(0)[..., None, None]
    if features == "linear":
        mean = m[..., 0:1]
        return mean, (m[..., 1] - m[..., 0].square()).clamp_min(0)[..., None, None]
    s1, s2, s3, s4 = m[..., 0], m[..., 1], m[..., 2], m[..., 3]
    v11 = (s2 - s1 * s1).clamp_min(0)
    v12 = s3 - s1 * s2
    v22 = (s4 - s2 * s2).clamp_min(0)
    cov = torch.stack([torch.stack([v11, v12], -1), torch.stack([v12, v22], -1)], -2)
    return torch.stack([s1, s2], -1), cov


def unshift_poly(mean: torch.Tensor, cov: torch.Tensor, shift: torch.Tensor):
    """Moments of (s, s^2) from those of (s', s'^2), s = s' + c: phi = A phi' + (c, c^2) with
    A = [[1, 0], [2c, 1]]. Needed by the robust Fisher witness, which is not shift invariant."""
    c = shift.double()
    a = torch.zeros(*c.shape, 2, 2, dtype=torch.float64)
    a[..., 0, 0] = a[..., 1, 1] = 1
    a[..., 1, 0] = 2 * c
    b = torch.stack([c, c * c], -1)
    new_mean = (a @ mean.unsqueeze(-1)).squeeze(-1) + b
    return new_mean, a @ cov @ a.transpose(-1, -2)


def first_shift(x: torch.Tensor) -> torch.Tensor:
    """The s-shift [C] a fresh ClassMoments takes from its first batch x: the spatial sums of
    its first sample (fp32, then float64). Any centre near the data conditions the fourth powers
    (``centred`` re-centres exactly); one sample's sums are within a spread of the mean and cost
    a read of 1/N of the batch, where the batch mean would read it all a second time."""
    return _as_nc_l(x[:1].detach()).sum(2).double()[0]


class ClassMoments(Statistic):
    """Per-class witness-feature power sums [K, C, 6] and counts [K] (float64).

    The s-powers are taken about a per-channel ``shift`` (default: s of the first batch's first
    sample, ``first_shift``)
    so fourth powers stay well conditioned; ``merge`` re-centres the other side binomially."""

    def __init__(
        self,
        num_channels: int,
        num_classes: int = 1,
        gamma: float = 1.0,
        shift: torch.Tensor | None = None,
        backend: str | None = None,
    ):
        if gamma <= 0:
            raise InputError(f"gamma must be positive, got {gamma}")
        self.num_channels, self.num_classes, self._backend = num_channels, num_classes, backend
        self.gamma = float(gamma)
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.sums = torch.zeros(num_classes, num_channels, 6, dtype=torch.float64)
        self.shift = None if shift is None else shift.detach().double().reshape(num_channels)

    def update(self, x, labels=None):
        if x.ndim >= 3 and x.shape[1] != self.num_channels == x.shape[-1]:
            x = x.movedim(-1, 1)  # a Linear on tokens / a channels-last map: channels last
        if x.shape[1] != self.num_channels:
            raise InputError(f"expected {self.num_channels} channels, got {x.shape[1]}")
        labels = _labels(x, labels, self.num_classes)
        self.to(x.device)
        shift = self.shift if self.shift is not None else first_shift(x)
        self.backend, fn = ops.resolve("class_moments", x, self._backend)
        # detached: a statistic is not differentiated, and the op's autograd wrapper would
        # otherwise chain every batch's sums into one graph
        counts, sums = fn(x.detach(), labels, self.num_classes, gamma=self.gamma, shift=shift)
        total = self.sums + sums
        # the finite check (one host sync): NaN/Inf in x reach the sums of s, so the input is
        # read again (check_activations, the precise message) only when the sums are not
        # finite; the state is updated only after it
        if not math.isfinite(float(total.sum())):  # 10x cheaper than isfinite().all()
            check_activations(x)
            raise InputError("witness power sums overflowed float64 (activations too large)")
        self.shift, self.sums = shift, total
        self.count = self.count + counts.to(self.count.dtype)

    def recentred(self, shift: torch.Tensor) -> torch.Tensor:
        """The s-power sums about ``shift`` instead of self.shift (binomial expansion)."""
        d = (self.shift - shift.double()).reshape(1, -1)  # s - new = (s - old) + d
        raw = [self.count.reshape(-1, 1).expand(-1, self.num_channels)] + [
            self.sums[..., p] for p in range(4)
        ]
        out = self.sums.clone()
        for p in range(1, 5):
            out[..., p - 1] = sum(comb(p, j) * d ** (p - j) * raw[j] for j in range(p + 1))
        return out

    def centred(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums about the overall mean of s, that mean [C]): canonical coordinates, so derived
        quantities do not depend on which batch set the shift (ridges are not affine invariant)."""
        n = self.count.sum().clamp_min(1)
        mean = self.shift + self.sums[..., 0].sum(0) / n
        return self.recentred(mean), mean

    def merge(self, other: ClassMoments) -> ClassMoments:
        self._check_merge(other)
        if other.gamma != self.gamma:
            raise InputError(
                f"cannot merge ClassMoments with gamma {other.gamma} into gamma {self.gamma}"
            )
        if other.shift is None:
            return self
        if self.shift is None:
            self.shift = other.shift.clone()
        self.sums = self.sums + other.recentred(self.shift)
        self.count = self.count + other.count
        return self

    def all_reduce(self, comm) -> None:
        """The shift of the lowest rank that saw data becomes everyone's (rank 0 holds the first
        batch of a sharded pass: the shift a single process would take); each rank re-centres
        its power sums to it, then the sums are all-reduced."""
        table = torch.zeros(comm.size, self.num_channels + 1, dtype=torch.float64)
        if self.shift is not None:
            table[comm.rank, 0], table[comm.rank, 1:] = 1.0, self.shift.cpu()
        table = comm.sum({"shifts": table})["shifts"]
        have = table[:, 0].nonzero()
        if len(have) == 0:
            return
        shift = table[int(have[0, 0]), 1:].to(self.sums.device)
        sums = self.recentred(shift) if self.shift is not None else torch.zeros_like(self.sums)
        got = comm.sum({"count": self.count, "sums": sums})
        self.shift, self.count, self.sums = shift, got["count"], got["sums"]

    def state_dict(self):
        shift = (
            self.shift
            if self.shift is not None
            else torch.zeros(self.num_channels, dtype=torch.float64)
        )
        return {"count": self.count, "sums": self.sums, "shift": shift}

    def rest(self, sums: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts [K], sums [K, C, 6]) of every class's complement: total minus class."""
        sums = self.sums if sums is None else sums
        return self.count.sum() - self.count, sums.sum(0, keepdim=True) - sums

    def moments(self, features: str = "poly", rest: bool = False):
        """Per-class (or per-complement) mean [K, C, d] and covariance [K, C, d, d] of phi."""
        n, s = self.rest() if rest else (self.count, self.sums)
        return feature_moments(n, s, features)

    def constant_channels(self) -> torch.Tensor:
        """[C] bool: channels whose s and e never vary over the data (score them 0)."""
        n = self.count.sum().clamp_min(1)
        t = self.sums.sum(0) / n
        var_s, var_e = t[:, 1] - t[:, 0] ** 2, t[:, 5] - t[:, 4] ** 2
        scale_s = t[:, 1] + self.shift.square() if self.shift is not None else t[:, 1]
        return (var_s <= 1e-12 * scale_s + 1e-300) & (var_e <= 1e-12 * t[:, 5] + 1e-300)


class ClassMaps(Statistic):
    """Per-class sums of activation maps [K, C, L], their squares and (``full``) outer products
    [K, C, L, L] (float64): class-mean maps and per-pixel or full covariances (TVSPrune).
    Outer products are kept only for maps of at most ``max_full`` pixels (memory is K C L^2);
    for larger maps ``full`` turns False at the first batch. ``pixel_squares=False`` keeps the
    squares summed over space ([K, C, 1]): enough for the pooled variance, half the state and
    half its memory traffic (per-pixel variances then raise)."""

    def __init__(
        self,
        num_channels: int,
        num_classes: int,
        full: bool = False,
        max_full: int = 64,
        backend: str | None = None,
        pixel_squares: bool = True,
    ):
        if full and not pixel_squares:
            raise InputError("full covariances need per-pixel squares (pixel_squares=True)")
        self.num_channels, self.num_classes, self._backend = num_channels, num_classes, backend
        self.full, self.max_full, self.pixel_squares = full, max_full, pixel_squares
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.sums = self.squares = self.outer = None

    def update(self, x, labels=None):
        labels = _labels(x, labels, self.num_classes)
        if self.sums is None and x[0, 0].numel() > self.max_full:
            self.full = False
        if not self.full:
            self._fold(x.detach(), labels)
            return
        check_activations(x)
        self.backend, fn = ops.resolve("class_maps", x, self._backend)
        counts, sums, squares, outer = fn(x.detach(), labels, self.num_classes, full=self.full)
        self.to(x.device)
        self.count = self.count + counts
        self.sums = sums if self.sums is None else self.sums + sums
        self.squares = squares if self.squares is None else self.squares + squares
        self.outer = outer if self.outer is None else self.outer + outer

    def _fold(self, x, labels):
        """Sums and squares folded in place into the float64 state from one read of x (the op
        ``class_maps_fold``: csrc/class_maps.cpp, or the reference ops.class_maps.accumulate_maps);
        the first batch writes fresh (uninitialised) state instead of adding to zeros. The finite
        check rides on the fold's total (one host sync), the precise message from
        check_activations only on failure."""
        self.to(x.device)
        length = math.prod(x.shape[2:])
        init = self.sums is None
        if init:
            shape = (self.num_classes, x.shape[1], length)
            self.sums = torch.empty(shape, dtype=torch.float64, device=x.device)
            self.squares = self.sums.new_empty(shape[:2] + (length if self.pixel_squares else 1,))
        elif x.shape[1:2] != self.sums.shape[1:2] or length != self.sums.shape[2]:
            raise InputError(
                f"map of shape {tuple(x.shape[1:])} does not match the statistic's "
                f"{tuple(self.sums.shape[1:])}"
            )
        # a backend forced for class_maps (triton: the full form) applies where the fold has it
        forced = self._backend or os.environ.get(ops.ENV)
        fold = forced if forced in ops.available("class_maps_fold", x.device) else "auto"
        self.backend, fn = ops.resolve("class_maps_fold", x, fold)
        total = fn(self.sums, self.squares, x, labels, init)
        if not math.isfinite(float(total)):
            check_activations(x)
            raise InputError("activation maps overflowed float64 (activations too large)")
        self.count = self.count + torch.bincount(labels, minlength=self.num_classes).to(self.count)

    def merge(self, other: ClassMaps) -> ClassMaps:
        if other.sums is None:
            return self
        if self.sums is None:
            self.load_state_dict(other.state_dict())
            return self
        self._check_merge(other)
        self.count, self.sums, self.squares = (
            self.count + other.count,
            self.sums + other.sums,
            self.squares + other.squares,
        )
        if self.full:
            self.outer = self.outer + other.outer
        return self

    def all_reduce(self, comm) -> None:
        """Sums over ranks; a rank that saw no batch learns the map size from the others."""
        pixels = 0.0 if self.sums is None else float(self.sums.shape[-1])
        got = comm.sum({"info": torch.tensor([pixels, float(pixels > 0)])})["info"]
        if got[1] == 0:
            return
        if self.sums is None:
            size, dev = int(got[0] / got[1]), self.count.device
            self.full = self.full and size <= self.max_full
            self.sums = torch.zeros(
                self.num_classes, self.num_channels, size, dtype=torch.float64, device=dev
            )
            self.squares = torch.zeros_like(self.sums if self.pixel_squares else self.sums[..., :1])
            if self.full:
                self.outer = torch.zeros(*self.sums.shape, size, dtype=torch.float64, device=dev)
        self._sum_state(comm)

    def state_dict(self):
        out = {"count": self.count}
        if self.sums is not None:
            out |= {"sums": self.sums, "squares": self.squares}
            if self.full:
                out["outer"] = self.outer
        return out

    def _n(self, extra: int = 0) -> torch.Tensor:
        return self.count.clamp_min(1).reshape(-1, *([1] * (1 + extra)))

    def means(self) -> torch.Tensor:
        """Class-mean maps [K, C, L]."""
        if self.sums is None:
            raise InputError("ClassMaps has seen no data")
        return self.sums / self._n(1)

    def variances(self) -> torch.Tensor:
        """Per-class per-pixel variances [K, C, L] (population)."""
        if not self.pixel_squares:
            raise InputError("per-pixel variances need ClassMaps(pixel_squares=True)")
        return (self.squares / self._n(1) - self.means().square()).clamp_min(0)

    block = 16 * BLOCK  # state elements per block of the derived quantities (4 MiB)

    def _channel_blocks(self):
        """Channel slices of ~``block`` state elements: derived quantities are formed block by
        block instead of as fresh [K, C, L] tensors, whose page faults dominate on a CPU; blocks
        stay large enough that ATen's and BLAS's thread start-up is amortised."""
        if self.sums is None:
            raise InputError("ClassMaps has seen no data")
        k, c, length = self.sums.shape
        step = max(1, self.block // max(k * length, 1))
        return [slice(i, i + step) for i in range(0, c, step)]

    def maps_gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gram [C, K, K], msq [K, C]) of ops.class_maps.maps_gram from one read of the state
        (op ``class_maps_gram``), kept until the state changes: both derived quantities read it."""
        if self.sums is None:
            raise InputError("ClassMaps has seen no data")
        key = (id(self.sums), self.sums._version, id(self.count), self.count._version)
        cached = getattr(self, "_gram_cache", None)
        if cached is None or cached[0] != key:
            _, fn = ops.resolve("class_maps_gram", self.sums)
            cached = (key, fn(self.sums, self.count))
            self._gram_cache = cached
        return cached[1]

    def pooled_variance(self) -> torch.Tensor:
        """variances().mean() (0-dim), block by block; with per-channel squares, the sum over
        space of E[x^2] - mu^2 per (class, channel) from ``maps_gram``'s sums of mu^2."""
        if not self.pixel_squares:
            n = self.count.clamp_min(1).reshape(-1, 1)
            msq = self.maps_gram()[1]
            return (self.squares[..., 0] / n - msq).clamp_min_(0).sum() / self.sums.numel()
        total = self.sums.new_zeros(())
        n = self._n(1)
        for b in self._channel_blocks():
            mu = self.sums[:, b] / n
            total += (self.squares[:, b] / n - mu.square()).clamp_min_(0).sum()
        return total / self.sums.numel()

    def mean_sq_dists(self, aggregation: str = "pairwise_min") -> torch.Tensor:
        """Squared distances ||mu_P - mu_Q||^2 between class-mean maps, [P, C]: for every class
        pair i < j (``pairwise_min``, the order of ``torch.triu_indices``), or each class vs the
        rest of the data (``ovr_min``). Pairs come from one per-channel K x K Gram of the means
        (``maps_gram``: K^2 C L multiply-adds, no [P, C, L] tensor); the means are centred per
        pixel first so near-equal classes do not cancel catastrophically."""
        if aggregation not in ("ovr_min", "pairwise_min"):
            raise InputError(f"unknown aggregation {aggregation!r}")
        if aggregation == "pairwise_min":
            i, j = torch.triu_indices(self.num_classes, self.num_classes, offset=1)
            gram = self.maps_gram()[0]
            sq = torch.diagonal(gram, dim1=1, dim2=2)  # [C, K]
            return (sq[:, i] + sq[:, j] - 2 * gram[:, i, j]).clamp_min(0).T
        n = self._n(1)
        rn = (self.count.sum() - self.count).clamp_min(1).reshape(-1, 1, 1)
        out = []
        for b in self._channel_blocks():
            mu = self.sums[:, b] / n
            rest = (self.sums[:, b].sum(0, keepdim=True) - self.sums[:, b]) / rn
            out.append(mu.sub_(rest).square_().sum(-1))
        return torch.cat(out, 1)

    def covariances(self) -> torch.Tensor:
        """Per-class full covariances [K, C, L, L] (needs ``full=True``)."""
        if not self.full:
            raise InputError("full covariances need ClassMaps(full=True)")
        mu = self.means()
        return self.outer / self._n(2) - mu.unsqueeze(3) * mu.unsqueeze(2)
