"""How many KV groups and FFN channels each block loses, from a parameter target.

* ``fixed_plan``: the rule given by the options alone (uniform ratios; the baselines).
* ``loss_curves``: a forward of every dense block over (a share of) the calibration tokens
  gives, per block, the compensated loss of removing 0..k FFN channels (``select.loss_curve``)
  and 0..G-1 KV groups, normalised by the energy of the block's output (the residual stream): a
  perturbation is judged relative to the stream it is added to, which every later block reads
  through a norm. Both kinds are measured where they enter the stream, the block's output: an
  FFN channel's loss at down_proj's output is that already; a KV group's is measured by running
  the block with the refit o_proj (G-1 more forwards), because its o_proj-level loss misses what
  the block's own FFN makes of the attention error (first 6 blocks of SmolLM2, 20 %: the
  o_proj-level loss rated one KV group per block 19 % cheaper than FFN channels alone, the
  block-output loss 7 %; on held-out Genesis the group plan was 13 % worse in logit error and
  2 % better in KL). The dense model's statistics stand in for the sequential ones.
* ``adaptive``: a global ranking of every block's next unit by normalised loss per parameter
  (FLAP-style adaptive structure: blocks that lose little give more), KV groups competing with
  FFN channels, until the parameter target is met.
* ``uniform_groups``: the same KV-group count for every block (so a config can describe the
  model), the one whose summed normalised loss is least once FFN channels fill the target."""

from __future__ import annotations

import math

import torch

from ...core.errors import InputError
from ...graph.decoder import DecoderBlock, matrix
from ...linalg import DEFAULT_RIDGE
from .calib import Moments, inputs_of, output, rows
from .select import inverse_gram, loss_curve, obs_removal, units_of


def fill(block: DecoderBlock, share: float, groups: int) -> int:
    """FFN channels that, with ``groups`` KV groups, remove ``share`` of the block."""
    return round((share * block.params() - groups * block.group_params()) / block.channel_params())


def fixed_plan(block: DecoderBlock, opts) -> tuple[int, int]:
    """(KV groups, FFN channels) removed from ``block`` by the options' ratios; InputError for a
    plan that empties a kind or cannot meet the parameter share."""
    groups, width = block.num_kv_heads, block.ffn_width
    if opts.params is None and opts.attn is None and opts.ffn is None:
        raise InputError("modhifi-llm needs params (a parameter share) or attn / ffn ratios")
    if opts.params is not None and opts.attn is not None and opts.ffn is not None:
        raise InputError("give params with at most one of attn / ffn (the other fills it)")
    if opts.attn is not None:
        g = round(opts.attn * groups)
    elif opts.params is not None and opts.ffn is None:
        g = math.floor(opts.params * groups + 1e-9)
    else:
        g = 0
    if opts.ffn is not None:
        c = round(opts.ffn * width)
    elif opts.params is not None:
        c = fill(block, opts.params, g)
    else:
        c = 0
    if g >= groups:
        raise InputError(f"{block.path}: removing {g} of {groups} KV groups leaves none")
    if c < 0:
        raise InputError(
            f"{block.path}: {g} KV group(s) alone remove more than params={opts.params} "
            "of the block; lower attn"
        )
    if c >= width:
        raise InputError(f"{block.path}: removing {c} of {width} FFN channels leaves none")
    if opts.params is not None and opts.attn is None and opts.ffn is not None:
        g_params = opts.params * block.params() - c * block.channel_params()
        g = max(0, min(groups - 1, math.floor(g_params / block.group_params() + 1e-9)))
    return g, c


def _curve_length(block: DecoderBlock, opts) -> int:
    """FFN channels the curve must reach: what any uniform plan fills, or max_block."""
    if opts.allocation == "adaptive":
        k = math.ceil(opts.max_block * block.ffn_width)
    else:
        k = fill(block, opts.params, 0)
    return max(0, min(block.ffn_width - 1, k))


@torch.no_grad()
def loss_curves(blocks: list[DecoderBlock], states, kwargs, masks, opts) -> list[dict]:
    """Per block {"attn": [G], "ffn": [k + 1]} normalised cumulative losses (dense model)."""
    curves = []
    for block in blocks:
        ma, mf, energy, tokens, nxt = Moments(), Moments(), 0.0, 0, []
        for x, kw, m in zip(states, kwargs[block.index], masks):
            with inputs_of({"a": block.o, "f": block.ffn_out}) as seen:
                y = output(block.layer(x, **kw))
            ma.add(rows(seen["a"], m))
            mf.add(rows(seen["f"], m))
            yr = rows(y, m)
            energy, tokens = energy + float(yr.float().square().sum()), tokens + len(yr)
            nxt.append(y)
        scale = max(energy / max(tokens, 1), 1e-30)
        chain = (states, kwargs[block.index], masks, nxt)
        attn = _attn_curve(block, ma.mean()[0], chain, opts.ridge) / max(tokens, 1)
        w, units = matrix(block.ffn_out).detach().cpu(), units_of(block, "ffn")
        upto = _curve_length(block, opts)
        ffn = loss_curve(w, mf.mean()[0], units, upto, opts.rounds, opts.ridge)
        curves.append({"attn": attn / scale, "ffn": ffn / scale})
        states = nxt
    return curves


@torch.no_grad()
def _attn_curve(block: DecoderBlock, gram, chain, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """[G] summed squared error of the block's output with 0..G-1 KV groups removed (in the
    greedy order of their compensated o_proj loss) and o_proj refit, non-decreasing. ``chain``:
    (block inputs, keyword arguments, masks, dense block outputs) per batch. o_proj is put back
    after."""
    states, kwargs, masks, dense = chain
    w, h = matrix(block.o).detach().double().cpu(), inverse_gram(gram, ridge)
    units, groups = units_of(block, "attn"), block.num_kv_heads
    order = obs_removal(w.clone(), h.clone(), units, groups - 1, 1)[0]
    saved, curve = block.o.weight.detach().clone(), [0.0]
    try:
        for g in range(1, groups):
            new = obs_removal(w.clone(), h.clone(), units[order[:g]], g, g)[2]
            matrix(block.o).copy_(new.to(block.o.weight))
            err = 0.0
            for x, kw, m, y in zip(states, kwargs, masks, dense):
                err += float(rows(output(block.layer(x, **kw)) - y, m).double().square().sum())
            curve.append(err)
    finally:
        block.o.weight.copy_(saved)
    return torch.tensor(curve, dtype=torch.float64).cummax(0).values


def _target(blocks: list[DecoderBlock], share: float) -> float:
    return share * sum(b.params() for b in blocks)


def adaptive(blocks: list[DecoderBlock], curves: list[dict], share: float) -> list[tuple[int, int]]:
    """Per-block (groups, channels) from a global ranking of loss per parameter."""
    moves = []  # (cost per parameter, block, kind, parameters)
    for i, (b, cv) in enumerate(zip(blocks, curves)):
        for kind, per in (("attn", b.group_params()), ("ffn", b.channel_params())):
            inc = cv[kind].diff()
            moves += [(float(d) / per, i, kind, per) for d in inc]
    moves.sort(key=lambda m: m[0])  # stable: a block's units stay in their greedy order
    left, plan = _target(blocks, share), [[0, 0] for _ in blocks]
    for _, i, kind, per in moves:
        if left <= 0:
            break
        if per > left + blocks[i].channel_params() / 2:  # a group would overshoot the target
            continue
        at = 0 if kind == "attn" else 1
        plan[i][at] += 1
        left -= per
    if left > blocks[0].channel_params():
        raise InputError(
            f"params={share}: the blocks cannot lose that much within max_block; raise max_block"
        )
    return [tuple(p) for p in plan]


def uniform_groups(blocks: list[DecoderBlock], curves: list[dict], share: float) -> int:
    """The KV-group count, the same in every block, of least summed loss at the target."""
    best, best_loss = 0, math.inf
    for g in range(blocks[0].num_kv_heads):
        total = 0.0
        for b, cv in zip(blocks, curves):
            c = fill(b, share, g)
            if c < 0 or c >= len(cv["ffn"]):
                total = math.inf
                break
            total += float(cv["attn"][g] + cv["ffn"][c])
        if total < best_loss:
            best, best_loss = g, total
    if best_loss == math.inf:
        raise InputError(f"params={share}: no uniform plan fits within max_block; raise it")
    return best
