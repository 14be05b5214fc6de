"""Model inputs of any shape the toolkit meets: a batch is a tensor, or a mapping of tensors
(transformers' ``input_ids``/``attention_mask``) whose first dimension is the batch. These helpers
run a batch through a model, count, select, join, repeat and move its rows, and check it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def call(model: nn.Module, x) -> Any:
    """``model(**x)`` for a mapping of tensors, else ``model(x)``."""
    return model(**x) if isinstance(x, Mapping) else model(x)


def batch_len(x) -> int:
    """The number of rows of a batch."""
    if isinstance(x, Mapping):
        return len(next(iter(x.values())))
    return len(x)


def take_rows(x, index):
    """Rows ``index`` of a tensor or of every tensor of a mapping."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, Mapping) else x[index]


def cat_batches(xs: list):
    """Batches (tensors, or mappings of tensors with the same keys) joined along the batch axis."""
    if xs and isinstance(xs[0], Mapping):
        return {k: torch.cat([x[k] for x in xs]) for k in xs[0]}
    return torch.cat(xs)


def repeat_batch(x, m: int):
    """``m`` copies of a batch (of every tensor of a mapping) stacked along the batch axis."""
    if isinstance(x, Mapping):
        return {k: repeat_batch(v, m) for k, v in x.items()}
    return x.repeat((m,) + (1,) * (x.ndim - 1))


def batch_to(x, device):
    """A batch (every tensor of a mapping) on ``device``."""
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, Mapping) else x.to(device)


def all_finite(x) -> bool:
    """No NaN or Inf in any floating input (token ids are integers and always pass)."""
    ts = x.values() if isinstance(x, Mapping) else [x]
    return all(torch.isfinite(t).all() for t in ts if torch.is_tensor(t) and t.is_floating_point())
