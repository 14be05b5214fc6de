"""transformers models in a save: the source of a model built by its class (derived from its
config, no ``source=`` needed), and a copy plain ``from_pretrained`` loads whenever a config can
describe the edited widths.

``plain_copy`` proposes a config with the widths the model now has (``intermediate_size``, the
head count, ``hidden_size``, ``head_dim`` where uniform), builds the class from it on the meta
device and accepts it only if every tensor of the state dict has the shape the model's has;
otherwise, for attention heads removed from a BERT-style model whose config derives the head size
from the width, a copy with the removed heads as zero slices; otherwise nothing, and the manifest
says only ``pluginedit.load`` rebuilds the model (its replayed steps describe any width)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.components import is_attention, unit_consumer
from ..graph.attention import blocks
from .manifest import WEIGHTS

REAL_BUILD_LIMIT = 50_000_000  # elements: a dense CPU copy to check shapes against, at most
ONLY_PE_LOAD = (
    "the edited widths are not expressible in this config (e.g. channels of one stage pruned "
    "unevenly): pluginedit.load rebuilds the model from its replayed steps"
)


def _transformers():
    """The transformers module if it is already imported (a model of it exists), else None:
    nothing here imports it for a model that is not one."""
    return sys.modules.get("transformers")


def source_of_class(model: nn.Module) -> dict | None:
    """``{"kind": "transformers", "class", "config"}`` for a model of a transformers class that
    transformers exports under its own name (so ``pluginedit.load`` can rebuild it), else None."""
    tf = _transformers()
    if tf is None or not isinstance(model, tf.PreTrainedModel):
        return None
    name = type(model).__name__
    if getattr(tf, name, None) is not type(model) or getattr(model, "config", None) is None:
        return None
    return {"kind": "transformers", "class": name, "config": model.config.to_dict()}


def _uniform(values) -> int | None:
    values = set(values)
    return values.pop() if len(values) == 1 else None


def _proposed(model: nn.Module):
    """The model's config with the widths its modules now have, where they are uniform."""
    config = copy.deepcopy(model.config)
    mods = dict(model.named_modules())
    ffn = _uniform(
        m.out_features
        for p, m in mods.items()
        if isinstance(m, nn.Linear) and p.endswith(("intermediate.dense", "mlp.fc1"))
    )
    found = blocks(model)
    heads = _uniform(b.qkv[0].out_features // b.head_dim for b in found)
    head_dim = _uniform(b.head_dim for b in found)
    hidden = _uniform(
        m.normalized_shape[-1]
        for p, m in mods.items()
        if isinstance(m, nn.LayerNorm) and p.rpartition(".")[2].lower().startswith("layernorm")
    )
    for key, value in (
        ("intermediate_size", ffn),
        ("num_attention_heads", heads),
        ("hidden_size", hidden),
    ):
        if value is not None and isinstance(getattr(config, key, None), int):
            setattr(config, key, value)
    if head_dim is not None and heads and getattr(config, "hidden_size", None) != heads * head_dim:
        config.head_dim = head_dim
    return config


def _fits(model: nn.Module, config, state: dict) -> bool:
    """Whether ``type(model)`` built from ``config`` has exactly ``state``'s tensor shapes (built
    on the meta device; on the CPU only for a small model whose class computes while it
    builds)."""
    try:
        with torch.device("meta"):  # no memory, no initialisation cost
            built = type(model)(copy.deepcopy(config))
    except Exception:  # noqa: BLE001 - some classes compute on tensors while they build
        if sum(t.numel() for t in state.values()) > REAL_BUILD_LIMIT:
            return False
        try:
            built = type(model)(copy.deepcopy(config))
        except Exception:  # noqa: BLE001 - a config the class refuses describes nothing
            return False
    shapes = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    return shapes == {k: tuple(v.shape) for k, v in state.items()}


def plain_copy(model: nn.Module, folder: Path, state: dict) -> tuple[str | None, str | None]:
    """Make the save loadable by plain ``transformers`` ``from_pretrained`` where a config can
    describe it: returns (the folder to load from, "." or "transformers", or None; why not)."""
    if getattr(model, "config", None) is None or _transformers() is None:
        return None, "not a transformers model"
    if _fits(model, model.config, state):
        model.config.save_pretrained(folder)
        return ".", None
    config = _proposed(model)
    if _fits(model, config, state):
        config.save_pretrained(folder)
        return ".", None
    padded = _padded_heads(model, config, state)
    if padded is not None:
        padded, config = padded
        sub = folder / "transformers"
        config.save_pretrained(sub)
        save_file(padded, str(sub / WEIGHTS), metadata={"format": "pt"})
        return "transformers", None
    return None, ONLY_PE_LOAD


def _padded_heads(model: nn.Module, config, state: dict) -> tuple[dict, object] | None:
    """Removed heads of BERT-style blocks as zero slices (a zero query, key and value head with
    zero output-projection columns adds exactly nothing): (state, config) if that state fits the
    config with its full head count; else None."""
    atts = {p: m for p, m in model.named_modules() if is_attention(m)}
    full = getattr(model.config, "num_attention_heads", None)
    if not atts or not isinstance(full, int):
        return None
    config = copy.deepcopy(config)
    config.num_attention_heads = full
    if "head_dim" in model.config.__dict__:
        config.head_dim = model.config.head_dim
    elif "head_dim" in config.__dict__:
        del config.head_dim
    padded = dict(state)
    try:
        for path, att in atts.items():
            width = full * att.attention_head_size
            for name in ("query", "key", "value"):
                for part in ("weight", "bias"):
                    key = f"{path}.{name}.{part}"
                    if key in padded:
                        padded[key] = _pad(padded[key], 0, width)
            out = f"{unit_consumer(model, path)}.weight"
            padded[out] = _pad(padded[out], 1, width)
    except (KeyError, AttributeError):
        return None
    return (padded, config) if _fits(model, config, padded) else None


def _pad(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim).contiguous()
