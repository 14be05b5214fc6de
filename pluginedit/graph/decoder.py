"""Decoder LLM blocks as components, described from their module structure, never traced.

A block of a Llama-family decoder (Llama, Mistral, Qwen2/Qwen3, Gemma/Gemma-3, Phi) or of OPT:
anything whose layers hold ``self_attn`` with ``q_proj``/``k_proj``/``v_proj`` and an output
projection, and an ``mlp`` with ``gate_proj``/``up_proj``/``down_proj`` or ``fc1``/``fc2`` (OPT:
``fc1``/``fc2`` on the layer); or of GPT-2: ``attn`` with one ``c_attn`` that packs q, k, v
along its outputs and ``c_proj``, an ``mlp`` with ``c_fc``/``c_proj``, all ``Conv1D`` (a Linear
whose weight is stored [in, out]), has two kinds of removable components:

* KV groups: KV head g and the ``num_heads // num_kv_heads`` query heads that share it. Removing a
  whole group removes k/v rows of head g, q rows of its query heads and the matching o_proj
  columns, so the group size (``num_key_value_groups``, which the forward reads) never changes
  and stays an integer. Without GQA a group is one head.
* FFN channels: rows of gate/up (fc1) and the matching column of down (fc2).

The hidden width is never touched, so tied embeddings stay tied. Surgery is ``index_select``
on the weights in place (no torch-pruning graph: generation caches never enter), and the
transformers config is rewritten when every block has the same shape, so that plain
``from_pretrained`` rebuilds the pruned model (not after OPT's heads are cut: its attention
derives head_dim from hidden_size / heads, and GPT-2's; ``pe.load`` then). Weights are read and
written through ``matrix`` ([out, in] whatever the storage) and ``DecoderBlock.rows``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import InputError

OUT_NAMES = ("o_proj", "dense", "out_proj")  # Llama family; Phi; OPT-style naming
GATED = ("gate_proj", "up_proj", "down_proj")
PLAIN = ("fc1", "fc2")


@dataclass
class DecoderBlock:
    """One decoder layer: its path, the attention's four projections, the FFN's input
    projections (rows) and output projection (columns), and the head geometry."""

    index: int
    path: str
    layer: nn.Module
    attn: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    mlp: nn.Module
    ffn_in: tuple[nn.Linear, ...]
    ffn_out: nn.Linear
    head_dim: int
    packed: bool = False  # GPT-2: q is k is v, one module whose outputs are [q; k; v]

    @property
    def num_heads(self) -> int:
        return out_dim(self.q) // (3 if self.packed else 1) // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        return out_dim(self.k) // (3 if self.packed else 1) // self.head_dim

    def rows(self, which: str) -> torch.Tensor:
        """The [rows, in] weights of ``which`` ("q", "k" or "v") projection."""
        w = matrix(getattr(self, which))
        if not self.packed:
            return w
        width = w.shape[0] // 3
        start = "qkv".index(which) * width
        return w[start : start + width]

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def ffn_width(self) -> int:
        return in_dim(self.ffn_out)

    def group_columns(self, groups) -> torch.Tensor:
        """o_proj input columns (= q rows) of the query heads of KV groups ``groups``."""
        width = self.group_size * self.head_dim
        idx = torch.as_tensor(groups, dtype=torch.long)
        return (idx[:, None] * width + torch.arange(width)).reshape(-1)

    def kv_rows(self, groups) -> torch.Tensor:
        idx = torch.as_tensor(groups, dtype=torch.long)
        return (idx[:, None] * self.head_dim + torch.arange(self.head_dim)).reshape(-1)

    def group_params(self) -> int:
        """Weights (and biases) one KV group owns."""
        cols = self.group_size * self.head_dim
        n = cols * in_dim(self.q) + 2 * self.head_dim * in_dim(self.k)
        n += cols * out_dim(self.o)
        n += sum(m.bias is not None for m in (self.q,)) * cols
        n += sum(m.bias is not None for m in (self.k, self.v)) * self.head_dim
        return n

    def channel_params(self) -> int:
        """Weights (and biases) one FFN channel owns."""
        n = sum(in_dim(m) + (m.bias is not None) for m in self.ffn_in)
        return n + out_dim(self.ffn_out)

    def params(self) -> int:
        return sum(p.numel() for p in self.layer.parameters())


def is_conv1d(m) -> bool:
    """transformers' ``Conv1D`` (GPT-2), by structure: nf outputs, nx inputs, weight [nx, nf]."""
    w = getattr(m, "weight", None)
    nf, nx = getattr(m, "nf", None), getattr(m, "nx", None)
    return isinstance(m, nn.Module) and torch.is_tensor(w) and w.shape == (nx, nf)


def out_dim(m) -> int:
    return m.nf if is_conv1d(m) else m.out_features


def in_dim(m) -> int:
    return m.nx if is_conv1d(m) else m.in_features


def matrix(m) -> torch.Tensor:
    """The weight of a Linear or Conv1D as [out, in] (a view: writing to it writes the layer)."""
    return m.weight.T if is_conv1d(m) else m.weight


def _child(module: nn.Module, name: str):
    m = getattr(module, name, None)
    return m if isinstance(m, nn.Linear) or is_conv1d(m) else None


def _gpt2_block(index: int, path: str, layer: nn.Module) -> DecoderBlock | None:
    attn, mlp = getattr(layer, "attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None:
        return None
    qkv, o = _child(attn, "c_attn"), _child(attn, "c_proj")
    fc, proj = _child(mlp, "c_fc"), _child(mlp, "c_proj")
    head_dim, split = getattr(attn, "head_dim", None), getattr(attn, "split_size", None)
    if None in (qkv, o, fc, proj) or not isinstance(head_dim, int) or not isinstance(split, int):
        return None
    if out_dim(qkv) != 3 * split or split % head_dim or hasattr(attn, "q_attn"):
        return None  # not q, k, v packed as GPT-2 does (or cross-attention): unknown
    return DecoderBlock(
        index, path, layer, attn, qkv, qkv, qkv, o, mlp, (fc,), proj, head_dim, packed=True
    )


def _block(index: int, path: str, layer: nn.Module) -> DecoderBlock | None:
    attn = getattr(layer, "self_attn", None)
    if attn is None:
        return _gpt2_block(index, path, layer)
    q, k, v = (_child(attn, n) for n in ("q_proj", "k_proj", "v_proj"))
    o = next((m for m in (_child(attn, n) for n in OUT_NAMES) if m is not None), None)
    # OPT keeps fc1 / fc2 on the layer itself, the Llama family under ``mlp``
    mlp = getattr(layer, "mlp", None) or (layer if _child(layer, "fc1") is not None else None)
    if None in (q, k, v, o, mlp):
        return None
    gated = [_child(mlp, n) for n in GATED]
    plain = [_child(mlp, n) for n in PLAIN]
    if None not in gated:
        ffn_in, ffn_out = tuple(gated[:2]), gated[2]
    elif None not in plain:
        ffn_in, ffn_out = (plain[0],), plain[1]
    else:
        return None
    head_dim = getattr(attn, "head_dim", None)
    if not isinstance(head_dim, int) or out_dim(q) % head_dim or out_dim(k) % head_dim:
        return None
    if getattr(attn, "num_key_value_groups", None) is None and out_dim(q) != out_dim(k):
        return None  # grouped heads without the attribute the forward would read: unknown
    return DecoderBlock(index, path, layer, attn, q, k, v, o, mlp, ffn_in, ffn_out, head_dim)


def decoder_blocks(model: nn.Module) -> list[DecoderBlock]:
    """The decoder blocks of ``model`` in order: the first ``nn.ModuleList`` whose every layer is
    a block. InputError for a model that has none (an encoder, a CNN)."""
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        blocks = [_block(i, f"{path}.{i}", layer) for i, layer in enumerate(mod)]
        if all(b is not None for b in blocks):
            return blocks
    raise InputError(
        f"{type(model).__name__} has no decoder blocks this editor knows: it needs a list of "
        "layers with self_attn (q_proj, k_proj, v_proj, o_proj) and an mlp (gate_proj, up_proj, "
        "down_proj, or fc1, fc2), or GPT-2's attn (c_attn, c_proj) and mlp (c_fc, c_proj)"
    )


def _select_(linear: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep the outputs (dim 0) or inputs (dim 1) ``idx`` of a Linear or Conv1D, in place."""
    idx = idx.to(linear.weight.device)
    conv1d = is_conv1d(linear)
    linear.weight = nn.Parameter(
        linear.weight.data.index_select(1 - dim if conv1d else dim, idx).contiguous(),
        requires_grad=linear.weight.requires_grad,
    )
    if dim == 0 and linear.bias is not None:
        linear.bias = nn.Parameter(
            linear.bias.data.index_select(0, idx).contiguous(),
            requires_grad=linear.bias.requires_grad,
        )
    attr = ("nf", "nx") if conv1d else ("out_features", "in_features")
    setattr(linear, attr[dim], len(idx))


def qkv_rows(block: DecoderBlock, groups, width: int | None = None) -> torch.Tensor:
    """The output rows of a packed q/k/v projection (GPT-2's c_attn) that KV groups ``groups``
    own: their query rows, then their key and value rows (offset by the widths before).
    ``width``: that of each of q, k, v (default: the projection's now)."""
    width = out_dim(block.q) // 3 if width is None else width
    cols, rows = block.group_columns(groups), block.kv_rows(groups)
    return torch.cat([cols, width + rows, 2 * width + rows])


@torch.no_grad()
def keep_groups(block: DecoderBlock, keep) -> None:
    """Keep only the KV groups ``keep`` (indices) of ``block``'s attention, in place."""
    keep = torch.as_tensor(sorted(int(g) for g in keep), dtype=torch.long)
    if not 0 < len(keep) <= block.num_kv_heads:
        raise InputError(f"{block.path}: keep between 1 and {block.num_kv_heads} KV groups")
    cols, rows = block.group_columns(keep), block.kv_rows(keep)
    if block.packed:
        _select_(block.q, qkv_rows(block, keep), 0)
        block.attn.split_size = len(cols)  # GPT-2 splits c_attn's output in three of this
    else:
        _select_(block.q, cols, 0)
        _select_(block.k, rows, 0)
        _select_(block.v, rows, 0)
    _select_(block.o, cols, 1)
    # older transformers versions read head counts from the module; 5.x only head_dim and
    # num_key_value_groups, which a whole-group removal leaves as they are
    for name, value in (("num_heads", block.num_heads), ("num_key_value_heads", len(keep))):
        if isinstance(getattr(block.attn, name, None), int):
            setattr(block.attn, name, value)


@torch.no_grad()
def keep_channels(block: DecoderBlock, keep) -> None:
    """Keep only the FFN channels ``keep`` (indices) of ``block``, in place."""
    keep = torch.as_tensor(sorted(int(c) for c in keep), dtype=torch.long)
    if not 0 < len(keep) <= block.ffn_width:
        raise InputError(f"{block.path}: keep between 1 and {block.ffn_width} FFN channels")
    for m in block.ffn_in:
        _select_(m, keep, 0)
    _select_(block.ffn_out, keep, 1)
    if isinstance(getattr(block.mlp, "intermediate_size", None), int):
        block.mlp.intermediate_size = len(keep)


def uniform(blocks: list[DecoderBlock]) -> bool:
    """Whether every block has the same heads, KV heads and FFN width (a config can say it)."""
    shapes = {(b.num_heads, b.num_kv_heads, b.ffn_width) for b in blocks}
    return len(shapes) == 1


def sync_config(model: nn.Module, blocks: list[DecoderBlock]) -> bool:
    """Write the blocks' shape into ``model.config`` (head_dim made explicit first: transformers
    derives it from hidden_size // num_attention_heads otherwise) when it is uniform. Returns
    whether the config now describes the model."""
    config = getattr(model, "config", None)
    if config is None or not uniform(blocks):
        return False
    heads = getattr(config, "num_attention_heads", None)
    if heads != blocks[0].num_heads and not hasattr(blocks[0].attn, "num_key_value_groups"):
        # OPT- and GPT-2-style attention derive head_dim from hidden_size / heads: no config
        # says it
        return False
    b = blocks[0]
    if b.packed:  # GPT-2: only the FFN width (n_inner, None for 4 x hidden) can change here
        config.n_inner = b.ffn_width
        return True
    config.head_dim = b.head_dim
    config.num_attention_heads = b.num_heads
    config.num_key_value_heads = b.num_kv_heads
    for name in ("intermediate_size", "ffn_dim"):
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, b.ffn_width)
    return True
