"""The one accuracy: top-1 overall and per class over labelled data, in eval mode (each
module's training flag restored), following the output rule of ``core.outputs``."""

from __future__ import annotations

import torch
from torch import nn

from .capture.inputs import batches
from .core.batches import take_rows
from .core.components import eval_mode
from .core.errors import InputError
from .core.outputs import output


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data,
    num_classes: int,
    batch_size: int = 512,
    max_samples: int | None = None,
    progress: bool = False,
) -> tuple[float, list[float | None]]:
    """(accuracy, per-class accuracy); a class with no sample in ``data`` reports None, not a
    made-up 0.0. ``progress``: a bar over the batches (a report's test set may be large)."""
    correct = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    with eval_mode(model):
        read = batches(model, data, num_classes, batch_size, max_samples, progress, "evaluate")
        for x, y in read:
            hit = (output(model, x).argmax(-1) == y).double().cpu()
            correct.index_add_(0, y.cpu(), hit)
            total.index_add_(0, y.cpu(), torch.ones_like(hit))
    per_class = [float(c / t) if t > 0 else None for c, t in zip(correct, total)]
    return float(correct.sum() / total.sum().clamp_min(1)), per_class


@torch.no_grad()
def class_accuracy(
    model: nn.Module,
    data,
    k: int,
    num_classes: int,
    batch_size: int = 512,
    max_samples: int | None = None,
) -> float:
    """Accuracy on the samples of class ``k`` among the first ``max_samples`` of ``data``; only
    those samples are run (an error if there are none)."""
    hit = n = 0
    with eval_mode(model):
        for x, y in batches(model, data, num_classes, batch_size, max_samples):
            sel = y == k
            if sel.any():
                hit += int((output(model, take_rows(x, sel)).argmax(-1) == k).sum())
                n += int(sel.sum())
    if n == 0:
        raise InputError(f"the data has no samples of class {k}")
    return hit / n


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Top-1 predictions [n] on the input tensor ``x``, in eval mode."""
    with eval_mode(model):
        return (
            torch.cat(
                [
                    output(model, x[i : i + batch_size]).argmax(-1)
                    for i in range(0, len(x), batch_size)
                ]
            )
            if len(x)
            else torch.zeros(0, dtype=torch.long)
        )
