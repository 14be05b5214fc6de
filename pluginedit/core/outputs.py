"""Model outputs of any shape the toolkit meets: a tensor, a tuple, a dict or a transformers
``ModelOutput`` (the inputs: ``core.batches``).

The rule for "the output" (what accuracy, class counts and shape checks read): a tensor is
itself; a mapping gives its ``logits`` entry if it has one, else its first tensor value (a
``ModelOutput``'s ``last_hidden_state``); a tuple or list gives its first tensor. A model
overrides the rule with an attribute ``pluginedit_output``: a function from its raw output to
the tensor to read (e.g. ``model.pluginedit_output = lambda out: out["cls_logits"]``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .batches import call
from .errors import InputError


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
