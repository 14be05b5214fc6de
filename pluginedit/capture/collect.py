"""Capture: forward hooks on chosen modules stream each batch's activations into statistics.
Activations are reduced inside the hook and never stored."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.batches import call
from ..core.components import eval_mode, get_module
from ..core.errors import InputError
from ..core.progress import wanted
from ..stats import Statistic
from ..stats.distributed import all_reduce
from .inputs import batches


@dataclass(eq=False)
class Request:
    """A handle: collect ``statistic`` from the ``where`` ("input" or "output") tensor of the
    module at path ``module``, or from the pair (input, output) with "io". ``collect`` returns
    the statistics keyed by these handles (compared by identity), so nothing is parsed out of
    strings."""

    module: str
    statistic: Statistic
    where: str = "output"

    def __post_init__(self):
        if self.where not in ("input", "output", "io"):
            raise InputError(f"hook point must be 'input', 'output' or 'io', got {self.where!r}")


def class_conditional(statistic: Statistic) -> bool:
    """Labels go to statistics kept per class (``num_classes`` > 1); the others get None."""
    return getattr(statistic, "num_classes", 1) > 1


def _real_tokens(t: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None):
    """Token activations [B, L, ...] of a padded text batch -> [real tokens, ...] with each
    token labelled by its sequence: padding must not enter the statistics."""
    if mask is None or t.ndim < 3 or tuple(t.shape[:2]) != tuple(mask.shape):
        return t, labels
    keep = mask.bool()
    return t[keep], labels.repeat_interleave(keep.sum(1))


def _hooked(where: str, inputs, output, current: dict):
    """(what a request at ``where`` sees: a tensor, or (input, output) for "io"; the labels)."""
    if where == "io":
        t, labels = _real_tokens(inputs[0].detach(), current["labels"], current["mask"])
        return (t, _real_tokens(output.detach(), current["labels"], current["mask"])[0]), labels
    t = inputs[0] if where == "input" else output
    return _real_tokens(t.detach(), current["labels"], current["mask"])


class _StopForward(Exception):
    """Raised by a hook to end a forward pass whose remaining layers are not needed."""


@torch.no_grad()
def collect(
    model: nn.Module,
    data,
    requests: Iterable[Request],
    num_classes: int | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = False,
    stop_early: bool = False,
) -> dict[Request, Statistic]:
    """One pass over ``data`` feeding every request; returns {request handle: statistic}.
    Every module's training flag is restored afterwards. ``stop_early`` abandons each batch's
    forward once every request has seen it (the rest of the network is not needed); only for
    modules called once per forward. Under ``torch.distributed`` each rank reads its shard of
    the batches and the statistics (which must start empty) are then all-reduced: every rank
    returns the statistics of the whole data."""
    requests = list(requests)
    current: dict = {}
    handles = []

    def make_hook(req: Request):
        def hook(module, inputs, output):
            t, labels = _hooked(req.where, inputs, output, current)
            req.statistic.update(t, labels if class_conditional(req.statistic) else None)
            if stop_early:
                current["seen"].add(id(req))
                if len(current["seen"]) == len(requests):
                    raise _StopForward

        return hook

    for req in requests:
        handles.append(get_module(model, req.module).register_forward_hook(make_hook(req)))
    try:
        with eval_mode(model):
            for x, y in batches(
                model,
                data,
                num_classes,
                batch_size,
                max_samples,
                wanted(progress),  # or bars asked around the edit (core.progress.shown)
                "statistics",
                shard=True,
            ):
                current["labels"], current["seen"] = y, set()
                current["mask"] = x.get("attention_mask") if isinstance(x, dict) else None
                try:
                    call(model, x)
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    all_reduce(req.statistic for req in requests)
    return {req: req.statistic for req in requests}
