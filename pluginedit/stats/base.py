"""The statistic contract: a mergeable sufficient statistic over streamed batches."""

from __future__ import annotations

import abc
import copy

import torch

from ..core.errors import InputError


class Statistic(abc.ABC):
    """``update`` folds in one batch, ``merge`` folds in another statistic of the same kind
    (another worker, another shard), ``state_dict`` / ``load_state_dict`` serialise it.
    Only reductions are kept, never activations."""

    backend: str = "torch"  # which kernel backend ran the last update

    @abc.abstractmethod
    def update(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None: ...

    @abc.abstractmethod
    def merge(self, other: Statistic) -> Statistic: ...

    @abc.abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def to(self, device) -> Statistic:
        """Move the accumulators to ``device`` (they follow the activations: an update on another
        device moves them once, a merge brings the other side over)."""
        for name, value in list(vars(self).items()):
            if torch.is_tensor(value) and value.device != torch.device(device):
                setattr(self, name, value.to(device))
        return self

    @property
    def device(self) -> torch.device:
        return next(
            (v.device for v in vars(self).values() if torch.is_tensor(v)), torch.device("cpu")
        )

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())

    def all_reduce(self, comm) -> None:
        """Combine this statistic, in place, with the same statistic on every other rank of
        ``comm`` (a ``stats.distributed.Comm``): afterwards every rank holds the statistic of all
        the shards. This default is right for any mergeable statistic: each rank's state is
        broadcast in turn and merged in rank order. The built-in statistics override it with
        all-reduces of their sums."""
        total = None
        for src in range(comm.size):
            state = comm.broadcast(
                {k: v.cpu() for k, v in self.state_dict().items()} if comm.rank == src else None,
                src,
            )
            part = copy.deepcopy(self)
            part.load_state_dict(state)
            part.to(self.device)
            total = part if total is None else total.merge(part)
        self.load_state_dict(total.state_dict())

    def _sum_state(self, comm) -> None:
        """``all_reduce`` of a statistic whose state is all sums (each tensor is added)."""
        for key, value in comm.sum(self.state_dict()).items():
            setattr(self, key, value)

    def _check_merge(self, other: Statistic) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        other.to(self.device)
        mine, theirs = self.state_dict(), other.state_dict()
        for key in mine:
            if mine[key].shape != theirs[key].shape:
                raise InputError(
                    f"cannot merge {type(self).__name__}: {key} has shape "
                    f"{tuple(mine[key].shape)} here and {tuple(theirs[key].shape)} there"
                )


def check_activations(x: torch.Tensor, where: str = "activations") -> None:
    """NaN or Inf in ``x`` is an error: one min/max reduction (NaN and Inf reach it), no mask."""
    if x.is_floating_point() and x.numel():
        lo, hi = torch.aminmax(x.detach())
        ok = bool(torch.isfinite(lo) & torch.isfinite(hi))
    else:
        ok = bool(torch.isfinite(x).all())
    if not ok:
        raise InputError(f"NaN or Inf in {where}: statistics would be meaningless")


def check_labels(labels: torch.Tensor, num_classes: int, n: int) -> torch.Tensor:
    if labels.shape != (n,):
        raise InputError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(
            f"labels out of range: found [{int(labels.min())}, {int(labels.max())}], "
            f"expected [0, {num_classes - 1}]"
        )
    return labels.long()
