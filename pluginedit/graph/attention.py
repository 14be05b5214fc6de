"""Attention blocks as the pruner sees them: a module with three Linear projections (``query``/
``key``/``value`` or ``q_proj``/``k_proj``/``v_proj``) of one width and a head count
(``num_attention_heads`` / ``num_heads``, or the width over ``head_dim`` /
``attention_head_size``). torch-pruning is told their heads, so that channel removal takes whole
heads (a head's query, key and value rows and its columns of the output projection) and never
mixes the channels of two heads into one; the head-count attributes a forward reads are updated
afterwards and recorded as replayable steps. Blocks whose projections differ in width
(grouped-query or reduced key dimensions) are left to torch-pruning's plain channel rules."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_PROJECTIONS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))
COUNT_ATTRS = ("num_attention_heads", "num_heads")  # updated to the heads kept
SIZE_ATTRS = ("attention_head_size", "head_dim")  # unchanged: whole heads go
WIDTH_ATTRS = ("all_head_size",)  # updated to the projections' width


@dataclass(frozen=True)
class Block:
    path: str
    module: nn.Module
    qkv: tuple[nn.Linear, nn.Linear, nn.Linear]
    heads: int  # when found
    head_dim: int


def _int_attr(module: nn.Module, names) -> int | None:
    for n in names:
        v = getattr(module, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def blocks(model: nn.Module) -> list[Block]:
    """The attention blocks of ``model`` whose heads can be removed whole."""
    out = []
    for path, m in model.named_modules():
        for names in _PROJECTIONS:
            qkv = tuple(getattr(m, n, None) for n in names)
            if all(isinstance(lin, nn.Linear) for lin in qkv):
                break
        else:
            continue
        width = qkv[0].out_features
        if any(lin.out_features != width for lin in qkv):
            continue
        heads = _int_attr(m, COUNT_ATTRS)
        size = _int_attr(m, SIZE_ATTRS)
        if heads is None and size is not None and width % size == 0:
            heads = width // size
        if heads is None or width % heads or (size is not None and size * heads != width):
            continue
        out.append(Block(path, m, qkv, heads, width // heads))
    return out


def removed_per_block(ratio: float, heads: int) -> int:
    """Heads a per-layer ``ratio`` removes from a block: the channel rule (keep
    int(n * (1 - ratio))), none when that would leave no head."""
    k = heads - int(heads * (1 - ratio))
    return k if 0 < k < heads else 0


def pruner_kwargs(found: list[Block], ratio: float, ignored: set) -> dict:
    """MetaPruner's head arguments: whole heads, ``ratio`` of each block (rounded as for channels);
    blocks with an ignored projection are left alone."""
    found = [b for b in found if not ignored & set(b.qkv)]
    if not found:
        return {}
    per_block = {}
    for b in found:
        k = removed_per_block(ratio, b.heads)
        # MetaPruner removes ceil(r * heads) heads of a block; (k - 0.5) / heads rounds to k
        r = (k - 0.5) / b.heads if k else 0.0
        per_block.update({lin: r for lin in b.qkv})
    return {
        "num_heads": {lin: b.heads for b in found for lin in b.qkv},
        "prune_num_heads": True,
        "prune_head_dims": False,
        "head_pruning_ratio": ratio,
        "head_pruning_ratio_dict": per_block,
    }


def update_heads(found: list[Block]) -> list[dict]:
    """Set each block's head count (and width) attributes to what its projections now hold;
    the changed ones as replayable ``attrs`` steps."""
    steps = []
    for b in found:
        width = b.qkv[0].out_features
        heads = width // b.head_dim
        new = {}
        for name in COUNT_ATTRS:
            if isinstance(getattr(b.module, name, None), int) and getattr(b.module, name) != heads:
                new[name] = heads
        for name in WIDTH_ATTRS:
            if isinstance(getattr(b.module, name, None), int) and getattr(b.module, name) != width:
                new[name] = width
        for name, value in new.items():
            setattr(b.module, name, value)
        if new:
            steps.append({"module": b.path, "attrs": new})
    return steps
