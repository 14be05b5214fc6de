"""Removals that leave a model running. torch-pruning can trace a graph it does not fully read
(DINOv2's classifier on cat(cls token, mean of the patches), Swin's patch merging of four slices
of one tensor, PVT's and SegFormer's reshapes by widths it does not see): it prunes, and the
model no longer runs. ``runnable_plan`` prunes a copy first; where the copy breaks, it prunes
it again one group at a time, a forward after each, and keeps whole the group (its root layer)
after which the forward fails, until the copy runs. The real removal then ignores those roots:
what torch-pruning reads correctly is pruned, the rest is kept and named."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from ..core.batches import call
from ..core.components import eval_mode
from ..core.errors import EditError
from ..core.outputs import primary
from . import attention
from .groups import is_out
from .pruner import prune_by_scores

PROBE_SECONDS = 60.0  # the whole search; past it the edit stops with an error naming the layers


class _Broken(Exception):
    def __init__(self, root: str, why: str):
        super().__init__(root)
        self.root, self.why = root, why


def _shape(model: nn.Module, example) -> tuple:
    with torch.no_grad(), eval_mode(model):
        return tuple(primary(call(model, example)).shape)


def failure(model: nn.Module, example, shape: tuple) -> str | None:
    """Why ``model`` no longer runs on ``example`` with output ``shape`` (None: it does)."""
    try:
        now = _shape(model, example)
    except Exception as e:  # noqa: BLE001 - any failure of the forward is the answer
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return None if now == shape else f"output shape {now}, was {shape}"


def runnable_plan(
    model: nn.Module,
    example,
    scores,
    ratio: float,
    ignored=(),
    global_pruning: bool = False,
    round_to: int | None = None,
    hook: Callable | None = None,
    seconds: float | None = None,
) -> tuple[dict[str, str], object]:
    """Prune copies of ``model`` until one still runs with its output shape. Returns ({root
    layer kept whole: why the model broke without it}, the ``hook()`` object (a ``before_group``
    callback) of the copy that ran, or None). ``ignored`` plus the returned roots, given to
    ``prune_by_scores`` on ``model``, remove exactly what that copy removed. An ``EditError``
    when no group can be pruned without breaking the model or the search outlasts ``seconds``."""
    shape, skip = _shape(model, example), {}
    limit = PROBE_SECONDS if seconds is None else seconds
    start, stepwise = time.monotonic(), False
    while True:
        twin, seen = copy.deepcopy(model), hook() if hook is not None else None
        after = _checker(twin, example, shape) if stepwise else None
        try:
            removed, _ = prune_by_scores(
                twin, example, scores, ratio, set(ignored) | set(skip), global_pruning,
                round_to, before_group=seen, after_group=after,
            )  # fmt: skip
        except _Broken as b:
            if b.root in skip or b.root == "?":
                raise EditError(
                    f"the pruned model no longer runs ({b.why}) and keeping the group of "
                    f"{b.root!r} whole does not help; torch-pruning did not see every "
                    "dependency of this model; use the 'mask' editor"
                ) from None
            skip[b.root] = b.why
        else:
            why = failure(twin, example, shape) if removed else None
            if why is None:
                return skip, seen
            if stepwise:  # each group ran alone, all together do not: nothing to single out
                raise EditError(
                    f"the pruned model no longer runs ({why}) though each removal alone keeps "
                    "it running; torch-pruning did not see every dependency; use the 'mask' "
                    "editor"
                )
            stepwise = True
        del twin
        if time.monotonic() - start > limit:
            raise EditError(
                f"the pruned model no longer runs and {limit:.0f} s did not find the groups to "
                f"keep whole (kept so far: {sorted(skip)[:5]}); torch-pruning misreads this "
                "model; use the 'mask' editor"
            )


def _checker(twin: nn.Module, example, shape: tuple) -> Callable:
    """An ``after_group`` callback: the head counts updated (a forward reads them), then a
    forward; a failure names the group (``_key``)."""
    found = attention.blocks(twin)

    def after(group, paths) -> None:
        attention.update_heads(found)
        why = failure(twin, example, shape)
        if why is not None:
            raise _Broken(_key(group, paths), why)

    return after


def _key(group, paths) -> str:
    """The layer that, ignored, keeps ``group`` whole: its first out-channel member (torch-pruning
    skips a group with an ignored out-channel layer; a head group may list an input first)."""
    for dep, _ in group:
        path = paths.get(dep.layer)
        if path is not None and is_out(dep.pruning_fn):
            return path
    return "?"
