"""Per-channel activation moments (count, mean, M2), overall and per class, merged with
Chan et al.'s pairwise formula so that large means do not cancel catastrophically."""

from __future__ import annotations

import torch

from .. import ops
from .base import Statistic, check_activations, check_labels


def chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Combine two (count [K], mean [K, C], m2 [K, C]) summaries; empty sides are exact no-ops."""
    count = count_a + count_b
    safe = count.clamp_min(1).unsqueeze(1)
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b.unsqueeze(1) / safe)
    m2 = m2_a + m2_b + delta.square() * (count_a * count_b).unsqueeze(1) / safe
    return count, mean, m2


class ChannelMoments(Statistic):
    """Streaming mean and variance of every channel, per class and overall (float64)."""

    def __init__(self, num_channels: int, num_classes: int = 1, backend: str | None = None):
        self.num_classes, self.num_channels, self._backend = num_classes, num_channels, backend
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.mean = torch.zeros(num_classes, num_channels, dtype=torch.float64)
        self.m2 = torch.zeros(num_classes, num_channels, dtype=torch.float64)

    def update(self, x, labels=None):
        check_activations(x)
        if labels is None:
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        labels = check_labels(labels, self.num_classes, x.shape[0]).to(x.device)
        self.backend, fn = ops.resolve("channel_moments", x, self._backend)
        self.to(x.device)
        batch = fn(x, labels, self.num_classes)
        self.count, self.mean, self.m2 = chan_merge(self.count, self.mean, self.m2, *batch)

    def merge(self, other: ChannelMoments) -> ChannelMoments:
        self._check_merge(other)
        self.count, self.mean, self.m2 = chan_merge(
            self.count, self.mean, self.m2, other.count, other.mean, other.m2
        )
        return self

    def all_reduce(self, comm) -> None:
        """Chan's formula over ranks: counts and sums give each class's overall mean, then each
        rank's M2 about that mean is summed."""
        n_r = self.count.unsqueeze(1)
        got = comm.sum({"count": self.count, "sum": self.mean * n_r})
        mean = got["sum"] / got["count"].clamp_min(1).unsqueeze(1)
        m2 = comm.sum({"m2": self.m2 + (self.mean - mean).square() * n_r})["m2"]
        self.count, self.mean, self.m2 = got["count"], mean, m2

    def state_dict(self):
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def variance(self, ddof: int = 1) -> torch.Tensor:
        """Per-class variance [K, C]; 0 where a class has too few observations."""
        return self.m2 / (self.count - ddof).clamp_min(1).unsqueeze(1)

    def overall(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(count, mean [C], m2 [C]) of all classes together."""
        c, m, s = self.count[:1] * 0, self.mean[:1] * 0, self.m2[:1] * 0
        for k in range(self.num_classes):
            c, m, s = chan_merge(
                c, m, s, self.count[k : k + 1], self.mean[k : k + 1], self.m2[k : k + 1]
            )
        return c[0], m[0], s[0]
