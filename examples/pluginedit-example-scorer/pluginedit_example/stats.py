"""A mergeable statistic: the sum of squares of each input channel of a layer (Wanda's
||X_j||^2), kept as sums so that shards, workers and processes combine exactly."""

import torch

import pluginedit as pe


class InputSquares(pe.Statistic):
    """Sum of squares and count of each channel of the hooked tensor.

    The contract (see the plugin guide): built empty; ``update`` folds in one batch; ``merge``
    folds in another InputSquares and returns ``self``; ``state_dict`` holds tensors only, named
    after the attributes (the default ``load_state_dict`` sets them back). ``channel_dim`` is
    configuration: a plain attribute, the same on every rank, so it stays out of the state.
    """

    def __init__(self, channels: int, channel_dim: int = 1):
        self.channel_dim = channel_dim
        self.sumsq = torch.zeros(channels, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    def update(self, x, labels=None):
        self.to(x.device)  # the accumulators follow the activations
        rows = x.movedim(self.channel_dim, -1).reshape(-1, self.sumsq.numel()).double()
        self.sumsq = self.sumsq + rows.square().sum(0)
        self.count = self.count + rows.shape[0]

    def merge(self, other):
        if type(other) is not type(self) or other.sumsq.shape != self.sumsq.shape:
            raise pe.InputError(
                f"cannot merge {type(other).__name__} into InputSquares({self.sumsq.numel()})"
            )
        other.to(self.device)
        self.sumsq = self.sumsq + other.sumsq
        self.count = self.count + other.count
        return self

    def state_dict(self):
        return {"sumsq": self.sumsq, "count": self.count}

    def all_reduce(self, comm):
        """The state is all sums: one all-reduce over the ranks instead of the default
        broadcast-and-merge (which would give the same result)."""
        total = comm.sum(self.state_dict())
        self.sumsq, self.count = total["sumsq"], total["count"]

    def rms(self) -> torch.Tensor:
        """Root-mean-square of each channel over everything seen."""
        return (self.sumsq / self.count.clamp_min(1)).sqrt()
