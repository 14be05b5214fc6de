"""Statistics over several processes: the one module that speaks ``torch.distributed``.

Under torchrun (gloo on CPUs, NCCL on GPUs) every rank collects the statistics of its own shard
of the data; ``all_reduce`` then combines them in place with each statistic's
``Statistic.all_reduce``, so every rank ends up holding the statistic of the whole data set (the
built-in statistics do it with all-reduces of their sums; any other mergeable statistic by
broadcasting each rank's state and merging in rank order). Sharding is deterministic: item ``i``
of a sharded loop (a batch of the pass, a COAR mask chunk, a prior point) goes to rank
``i mod world size``; nothing is counted twice or dropped.

Collection is distributed whenever a process group of more than one process is initialised;
``single_process()`` opts out (e.g. scoring on one rank only of a training job)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

BACKEND_ENV = "PLUGINEDIT_DIST_BACKEND"
_local = [False]


@dataclass(frozen=True)
class Comm:
    """This process's place in the group and the device its collectives run on."""

    rank: int
    size: int
    device: torch.device

    def mine(self, index: int) -> bool:
        """Whether item ``index`` of a sharded loop belongs to this rank."""
        return index % self.size == self.rank

    def sum(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each tensor summed over ranks, in one all-reduce (float64 on the wire); every result
        keeps its tensor's shape, dtype and device. Every rank must pass the same shapes."""
        keys = list(tensors)
        if not keys:
            return {}
        flat = torch.cat(
            [tensors[k].detach().reshape(-1).to(self.device, torch.float64) for k in keys]
        )
        dist.all_reduce(flat)
        out, at = {}, 0
        for k in keys:
            t = tensors[k]
            out[k] = flat[at : at + t.numel()].reshape(t.shape).to(t.device, t.dtype)
            at += t.numel()
        return out

    def broadcast(self, obj, src: int):
        """Any picklable ``obj`` of rank ``src``, on every rank."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(
            box, src, device=self.device if self.device.type == "cuda" else None
        )
        return box[0]


def world() -> Comm | None:
    """The process group of the current run, or None when running alone (no group, a group of
    one, or inside ``single_process()``)."""
    if (
        _local[0]
        or not (dist.is_available() and dist.is_initialized())
        or dist.get_world_size() < 2
    ):
        return None
    gloo = "gloo" in str(dist.get_backend())
    device = torch.device("cpu") if gloo else torch.device("cuda", torch.cuda.current_device())
    return Comm(dist.get_rank(), dist.get_world_size(), device)


def is_main() -> bool:
    """True on rank 0, or when running alone: the process that prints and writes files."""
    comm = world()
    return comm is None or comm.rank == 0


def all_reduce(statistics: Iterable, comm: Comm | None = None) -> None:
    """Combine every statistic (each object once, in the order given) over the ranks, in place."""
    comm = comm or world()
    if comm is None:
        return
    seen = set()
    for stat in statistics:
        if id(stat) not in seen:
            seen.add(id(stat))
            stat.all_reduce(comm)


def sum_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Sum the ``.grad`` of ``parameters`` over the ranks (a rank without one counts zeros; a
    parameter no rank has a gradient for keeps None)."""
    comm = world()
    if comm is None:
        return
    params = [p for p in parameters if p.requires_grad]
    got = comm.sum(
        {"has": torch.tensor([float(p.grad is not None) for p in params])}
        | {
            str(i): p.grad if p.grad is not None else torch.zeros_like(p)
            for i, p in enumerate(params)
        }
    )
    for i, p in enumerate(params):
        p.grad = got[str(i)] if got["has"][i] > 0 else None


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1): gloo
    on CPU-only machines, NCCL where CUDA is available (``PLUGINEDIT_DIST_BACKEND`` overrides).
    Returns True if this call created the group (then ``finish()`` it)."""
    if (
        int(os.environ.get("WORLD_SIZE", "1")) < 2
        or not dist.is_available()
        or dist.is_initialized()
    ):
        return False
    backend = (
        backend or os.environ.get(BACKEND_ENV) or ("nccl" if torch.cuda.is_available() else "gloo")
    )
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block before the others do (e.g. it trains and caches a model that the
    others then load); a no-op when running alone."""
    comm = world()
    if comm is not None and comm.rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if comm is not None and comm.rank == 0:
            dist.barrier()


@contextlib.contextmanager
def single_process():
    """Collect and score on this process's data alone, even inside a process group."""
    was, _local[0] = _local[0], True
    try:
        yield
    finally:
        _local[0] = was
