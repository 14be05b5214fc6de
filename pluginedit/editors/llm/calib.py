"""Layer-by-layer calibration of a decoder: the inputs of block 0 are captured once, each block's
statistics come from its forward on the current activations, and the activations are then
propagated through the edited block to the next. Memory holds the calibration activations (one
[B, T, hidden] tensor per batch), the per-layer keyword arguments the model built once (masks and
rotary tables, shared by reference) and one block's Grams."""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn

from ...core.errors import InputError
from ...graph.decoder import DecoderBlock


class _Stop(Exception):
    """Raised by the last catcher: nothing after the blocks is computed."""


def token_batches(data, vocab: int, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Calibration batches as {"input_ids": [B, T] (, "attention_mask")} from token ids: a 2-D
    integer tensor (split into batches of ``batch_size`` rows), a dict holding ``input_ids``
    (and ``attention_mask``), or a list of either. Checked whole before any forward."""
    if torch.is_tensor(data) or isinstance(data, dict):
        whole = data if isinstance(data, dict) else {"input_ids": data}
        ids = whole.get("input_ids")
        if not torch.is_tensor(ids):
            raise InputError("token data as a dict needs an 'input_ids' tensor")
        items = [
            {k: v[i : i + batch_size] for k, v in whole.items() if torch.is_tensor(v)}
            for i in range(0, max(len(ids), 1), batch_size)
        ]
    elif isinstance(data, (list, tuple)):
        items = [d if isinstance(d, dict) else {"input_ids": d} for d in data]
    else:
        raise InputError(
            f"calibration data for a decoder must be token ids (a [N, T] integer tensor, a dict "
            f"with 'input_ids', or a list of them), got {type(data).__name__}"
        )
    if not items:
        raise InputError("the calibration data is empty")
    for j, b in enumerate(items):
        _check_batch(j, b, vocab)
    return items


def _check_batch(j: int, batch: dict, vocab: int) -> None:
    ids = batch.get("input_ids")
    if not torch.is_tensor(ids) or ids.ndim != 2 or ids.numel() == 0:
        raise InputError(f"calibration batch {j}: input_ids must be a non-empty [B, T] tensor")
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise InputError(f"calibration batch {j}: input_ids must be integers, got {ids.dtype}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise InputError(
            f"calibration batch {j}: token ids in [{int(ids.min())}, {int(ids.max())}], "
            f"the model's vocabulary has {vocab}"
        )
    mask = batch.get("attention_mask")
    if mask is not None and (not torch.is_tensor(mask) or mask.shape != ids.shape):
        raise InputError(f"calibration batch {j}: attention_mask must have input_ids' shape")


@torch.no_grad()
def capture(model: nn.Module, blocks: list[DecoderBlock], batches: list[dict]):
    """(hidden states entering block 0 per batch, keyword arguments of every block per batch,
    token masks per batch): each block's forward is replaced by a catcher for one model call
    per batch, so the model builds its masks and rotary tables itself, and nothing after
    the last block runs."""
    device = next(model.parameters()).device
    states, masks = [], []
    kwargs: list[list[dict]] = [[] for _ in blocks]

    def catcher(i: int):
        def forward(hidden, *args, **kw):
            if args:  # GPT-2 passes its cache and mask positionally: named here, once
                kw = _named(blocks[i], args, kw)
            if i == 0:
                states.append(hidden.detach())
            kwargs[i].append(kw)
            if i == len(blocks) - 1:
                raise _Stop
            return hidden

        return forward

    with _replaced(blocks, catcher):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            mask = batch.get("attention_mask")
            masks.append(None if mask is None else mask.bool())
            with contextlib.suppress(_Stop):
                model(**batch, use_cache=False)
    return states, kwargs, masks


def _named(block: DecoderBlock, args: tuple, kw: dict) -> dict:
    """The keyword arguments of a block call made with positional ones (after the hidden
    states), by the signature of the layer's class forward."""
    sig = inspect.signature(type(block.layer).forward)
    try:
        bound = sig.bind(block.layer, None, *args, **kw)
    except TypeError as e:
        raise InputError(f"{block.path}: its call does not fit its forward ({e})") from None
    named = {}
    for name, value in list(bound.arguments.items())[2:]:  # self and the hidden states
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise InputError(f"{block.path} is called with extra positional arguments")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


@contextlib.contextmanager
def _replaced(blocks: list[DecoderBlock], make):
    for b in blocks:
        b.layer.forward = make(b.index)
    try:
        yield
    finally:
        for b in blocks:
            b.layer.__dict__.pop("forward", None)


def run_block(block: DecoderBlock, states: list, kwargs: list[dict]) -> list[torch.Tensor]:
    """The block's outputs on every batch of calibration activations."""
    out = []
    with torch.no_grad():
        for x, kw in zip(states, kwargs):
            y = block.layer(x, **kw)
            out.append((y[0] if isinstance(y, tuple) else y).detach())
    return out


def rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[tokens, features] of a [B, T, features] tensor, padding left out."""
    return t[mask] if mask is not None else t.reshape(-1, t.shape[-1])


def output(y) -> torch.Tensor:
    return (y[0] if isinstance(y, tuple) else y).detach()


@contextlib.contextmanager
def inputs_of(layers: dict[str, nn.Module]):
    """{key: the input of ``layers[key]`` at its latest call}, filled by forward pre-hooks."""
    seen: dict[str, torch.Tensor] = {}

    def hook(key: str):
        def record(module, args):
            seen[key] = args[0].detach()

        return record

    handles = [m.register_forward_pre_hook(hook(k)) for k, m in layers.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


class Moments:
    """Gram E[x x^T] of a layer's inputs and, with targets, the cross Gram E[t x^T] (float64,
    per token; each product formed in float32 on the inputs' device, summed on the host)."""

    def __init__(self):
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.tokens = 0

    @staticmethod
    def _acc(total, a: torch.Tensor, b: torch.Tensor):
        p = (a.float().T @ b.float()).double().cpu()
        return p if total is None else total.add_(p)

    def add(self, x: torch.Tensor, target: torch.Tensor | None = None) -> None:
        self.gram = self._acc(self.gram, x, x)
        if target is not None:
            self.cross = self._acc(self.cross, target, x)
        self.tokens += len(x)

    def mean(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Gram, cross Gram) per token, divided in place: the sums are spent (no second
        copy of a block's largest statistic while it is used)."""
        n = max(self.tokens, 1)
        gram, cross = self.gram.div_(n), None if self.cross is None else self.cross.div_(n)
        self.gram = self.cross = None
        return gram, cross
