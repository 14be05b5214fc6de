"""Model inputs and outputs of any shape the toolkit meets: a tensor, or a mapping of tensors
(transformers' ``input_ids``/``attention_mask``) in; a tensor, a tuple, a dict or a transformers
``ModelOutput`` out.

The rule for "the output" (what accuracy, class counts and shape checks read): a tensor is
itself; a mapping gives its ``logits`` entry if it has one, else its first tensor value (a
``ModelOutput``'s ``last_hidden_state``); a tuple or list gives its first tensor. A model
overrides the rule with an attribute ``pluginedit_output``: a function from its raw output to
the tensor to read (e.g. ``model.pluginedit_output = lambda out: out["cls_logits"]``)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .errors import InputError


def call(model: nn.Module, x) -> Any:
    """``model(**x)`` for a mapping of tensors, else ``model(x)``."""
    return model(**x) if isinstance(x, Mapping) else model(x)


def output(model: nn.Module, x) -> torch.Tensor:
    """The model's output tensor on ``x`` by the rule above (or the model's own override)."""
    rule = getattr(model, "pluginedit_output", None) or primary
    out = rule(call(model, x))
    if not torch.is_tensor(out):
        raise InputError(f"the output rule gave a {type(out).__name__}, not a tensor")
    return out


def tensors(out) -> list[torch.Tensor]:
    """Every tensor of a model output, in order."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in tensors(v)]
    return []


def primary(out) -> torch.Tensor:
    """The output tensor by the rule in the module docstring."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, Mapping) and torch.is_tensor(out.get("logits")):
        return out["logits"]
    found = tensors(out)
    if not found:
        raise InputError(f"the model returned {type(out).__name__} with no tensor in it")
    return found[0]


def batch_size(x) -> int:
    if isinstance(x, Mapping):
        return len(next(iter(x.values())))
    return len(x)


def take(x, index):
    """Rows ``index`` of a tensor or of every tensor of a mapping."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, Mapping) else x[index]


def cat(xs: list):
    """Batches (tensors, or mappings of tensors with the same keys) joined along the batch axis."""
    if xs and isinstance(xs[0], Mapping):
        return {k: torch.cat([x[k] for x in xs]) for k in xs[0]}
    return torch.cat(xs)


def repeat(x, m: int):
    """``m`` copies of a batch (of every tensor of a mapping) stacked along the batch axis."""
    if isinstance(x, Mapping):
        return {k: repeat(v, m) for k, v in x.items()}
    return x.repeat((m,) + (1,) * (x.ndim - 1))


def to(x, device):
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, Mapping) else x.to(device)


def finite(x) -> bool:
    """No NaN or Inf in any floating input (token ids are integers and always pass)."""
    ts = x.values() if isinstance(x, Mapping) else [x]
    return all(torch.isfinite(t).all() for t in ts if torch.is_tensor(t) and t.is_floating_point())
