"""The witness and TVS statistics of one activation from one read (ALGORITHMS.md §1 S1 + S2).

``WitnessMaps`` holds a ``ClassMoments`` (witness power sums) and a ``ClassMaps`` (class-mean
maps) and folds a batch into both from a single float64 view of the activations: the maps and
their squares are formed once; their spatial sums give s and ||A||^2 for the witness features,
their per-class sums the class maps. Separately the two statistics read the activations twice
and square them twice. The parts stay ordinary statistics (``.moments``, ``.maps``), so scorers
read them as before.
"""

from __future__ import annotations

import torch

from ..core.errors import InputError
from ..ops._common import _as_nc_l
from ..ops.class_maps import map_sums
from ..ops.class_moments import power_sums
from .base import Statistic, check_activations
from .class_moments import ClassMaps, ClassMoments, _labels, first_shift


class WitnessMaps(Statistic):
    """``ClassMoments`` and ``ClassMaps`` of the same activations, updated from one read."""

    def __init__(
        self,
        num_channels: int,
        num_classes: int,
        gamma: float = 1.0,
        full: bool = False,
        max_full: int = 64,
    ):
        self.moments = ClassMoments(num_channels, num_classes, gamma)
        self.maps = ClassMaps(num_channels, num_classes, full, max_full)
        self.num_channels, self.num_classes = num_channels, num_classes

    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        check_activations(x)
        if x.shape[1] != self.num_channels:
            raise InputError(f"expected {self.num_channels} channels, got {x.shape[1]}")
        k, m, p = self.num_classes, self.moments, self.maps
        labels = _labels(x, labels, k)
        v = _as_nc_l(x.detach()).double()  # the one read of the activations
        sq = v.square()
        s = v.sum(2)
        m.to(x.device)
        if m.shift is None:  # as ClassMoments
            m.shift = first_shift(x)
        counts, sums = power_sums(s, sq.sum(2), labels, k, m.gamma, m.shift)
        m.sums, m.count = m.sums + sums, m.count + counts
        if not torch.isfinite(m.sums).all():
            raise InputError("witness power sums overflowed float64 (activations too large)")
        if p.sums is None and v.shape[2] > p.max_full:
            p.full = False
        _, msums, squares, outer = map_sums(v, sq, labels, k, p.full)
        p.to(x.device)
        p.count = p.count + counts
        p.sums = msums if p.sums is None else p.sums + msums
        p.squares = squares if p.squares is None else p.squares + squares
        if p.full:
            p.outer = outer if p.outer is None else p.outer + outer

    def merge(self, other: WitnessMaps) -> WitnessMaps:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into WitnessMaps")
        self.moments.merge(other.moments)
        self.maps.merge(other.maps)
        return self

    def all_reduce(self, comm) -> None:
        self.moments.all_reduce(comm)
        self.maps.all_reduce(comm)

    def to(self, device) -> WitnessMaps:
        self.moments.to(device)
        self.maps.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.moments.device

    def state_dict(self) -> dict[str, torch.Tensor]:
        parts = (("moments", self.moments), ("maps", self.maps))
        return {f"{name}.{key}": v for name, part in parts for key, v in part.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("moments", "maps"):
            prefix = f"{name}."
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            getattr(self, name).load_state_dict(part)
