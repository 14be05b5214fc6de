"""One block of the sequential pass: statistics, choice, refit, cut, propagation.

Two chains of calibration activations run side by side: the pruned model's (``states``: what
the edited blocks produce) and, with ``target="dense"``, the dense model's (``dense``: what the
unedited blocks produce). The output projections of the block are refit so that, fed with the
pruned chain's inputs, they reproduce the dense block's outputs on the dense chain's inputs
(cross Grams E[a_dense a^T]: the error of the blocks before is corrected too, as error-corrected
sequential pruners do); with ``target="self"`` each projection only reproduces its own output
on the pruned chain. The FFN's statistics are taken after the block's attention is cut, so its
refit sees the attention it will run with.

Forwards of the block over the calibration tokens: dense target 4 (the dense copy once, the
pruned block for the attention Gram, for the FFN Gram and for the propagation), self 3 (2 when
no KV group goes). Memory: the two chains, the dense FFN inputs of this block (tokens x width)
and one block's Grams."""

from __future__ import annotations

import copy
import time

import torch

from ...graph.decoder import DecoderBlock, keep_channels, keep_groups
from .calib import Moments, inputs_of, output, rows
from .select import prune_kind


def _relative(block: DecoderBlock, module) -> str:
    return next(n for n, m in block.layer.named_modules() if m is module)


@torch.no_grad()
def _attention_pass(block: DecoderBlock, states, dense, kwargs, masks):
    """(attention Moments, FFN Moments or None, dense FFN inputs per batch, dense outputs)."""
    copy_layer = None
    if dense is not None and any(d is not x for d, x in zip(dense, states)):
        copy_layer = copy.deepcopy(block.layer)
        d_o = copy_layer.get_submodule(_relative(block, block.o))
        d_f = copy_layer.get_submodule(_relative(block, block.ffn_out))
    ma, mf = Moments(), Moments()
    f_dense, y_dense = [], []
    for i, (x, kw, m) in enumerate(zip(states, kwargs, masks)):
        with inputs_of({"a": block.o, "f": block.ffn_out}) as seen:
            y = output(block.layer(x, **kw))
        a, f = rows(seen["a"], m), rows(seen["f"], m)
        if dense is None:
            ma.add(a)
            mf.add(f)
            continue
        if copy_layer is not None and dense[i] is not x:
            with inputs_of({"a": d_o, "f": d_f}) as seen:
                y = output(copy_layer(dense[i], **kw))
            ma.add(a, rows(seen["a"], m))
            f_dense.append(rows(seen["f"], m))
        else:  # the chains still agree: the block's own forward is the dense one
            ma.add(a, a)
            f_dense.append(f)
        y_dense.append(y)
    return ma, (mf if dense is None else None), f_dense, y_dense


@torch.no_grad()
def _ffn_moments(block: DecoderBlock, states, kwargs, masks, f_dense) -> Moments:
    mf = Moments()
    for i, (x, kw, m) in enumerate(zip(states, kwargs, masks)):
        with inputs_of({"f": block.ffn_out}) as seen:
            block.layer(x, **kw)
        mf.add(rows(seen["f"], m), f_dense[i] if f_dense else None)
    return mf


@torch.no_grad()
def prune_block(block: DecoderBlock, plan: tuple[int, int], chains: dict, opts, compensate: bool):
    """Prune ``block`` to ``plan`` = (KV groups, FFN channels) removed, in place, and advance
    ``chains`` ({"states", "dense" (None with the self target), "kwargs", "masks"}) past it.
    Returns the block's record."""
    t = time.perf_counter()
    g, c = plan
    states, dense = chains["states"], chains["dense"]
    kwargs, masks = chains["kwargs"], chains["masks"]
    ma, mf, f_dense, y_dense = _attention_pass(block, states, dense, kwargs, masks)
    ga, ca = ma.mean()
    # with the dense target the projection is refit even when nothing of it goes: it then
    # corrects the drift of the blocks before
    refit_all = compensate and ca is not None
    groups, gloss = prune_kind(
        block, "attn", opts.method, ga, g, opts.rounds, opts.ridge, ca, compensate, refit_all
    )
    if groups:
        keep_groups(block, sorted(set(range(block.num_kv_heads)) - set(groups)))
    if mf is None or groups:
        mf = _ffn_moments(block, states, kwargs, masks, f_dense)
    del f_dense
    gf, cf = mf.mean()
    chans, closs = prune_kind(
        block, "ffn", opts.method, gf, c, opts.rounds, opts.ridge, cf, compensate, refit_all
    )
    if chans:
        keep_channels(block, sorted(set(range(block.ffn_width)) - set(chans)))
    chains["states"] = [output(block.layer(x, **kw)) for x, kw in zip(states, kwargs)]
    if dense is not None:
        chains["dense"] = y_dense
    return {
        "block": block.path,
        "kv_groups": sorted(groups),
        "ffn_channels": len(chans),
        "channels": chans,
        "attn_loss": sum(gloss),
        "ffn_loss": sum(closs),
        "seconds": round(time.perf_counter() - t, 3),
    }
