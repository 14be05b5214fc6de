"""``modhifi-llm``: structured pruning of a decoder LLM block by block (ModHiFi-P for decoders).

The inputs of block 0 are captured once; then for each block: one forward over the calibration
activations collects the Grams of the attention and FFN output projections' inputs, the KV
groups and FFN channels to remove are chosen (ModHiFi's compensated subset-fidelity loss, or
the magnitude / Wanda-style baselines), the output projections are refit by least squares on
their kept inputs (delta*), the units are cut (``graph.decoder``), and the activations are
propagated through the edited block to the next. The cost is two forwards of each block over
the calibration tokens, linear in depth; memory is the activations plus one block's Grams."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Literal

from tqdm.auto import tqdm

from ...core.components import eval_mode
from ...core.errors import InputError
from ...core.plugin import COUNT, NONNEGATIVE, RATIO, Editor, option
from ...graph.decoder import DecoderBlock, decoder_blocks, keep_channels, keep_groups, sync_config
from ...linalg import DEFAULT_RIDGE, IllConditionedWarning
from .calib import block_grams, capture, run_block, token_batches
from .select import choose, refit


@dataclass(frozen=True)
class ModHiFiLLMOptions:
    params: float | None = option(None, "fraction of each block's parameters removed", **RATIO)
    attn: float | None = option(
        None,
        "fraction of KV groups removed per block (default with params: whole groups "
        "that fit the parameter share, rounded down)",
        at_least=0,
        below=1,
    )
    ffn: float | None = option(
        None,
        "fraction of FFN channels removed per block (default with params: what fills "
        "the parameter target)",
        at_least=0,
        below=1,
    )
    method: Literal["modhifi", "magnitude", "wanda"] = option(
        "modhifi", "unit scores: compensated subset fidelity, weight norm, or |W| x input norm"
    )
    compensate: bool | None = option(
        None, "least-squares refit of o_proj / down_proj (default: on for modhifi only)"
    )
    rounds: int = option(8, "greedy rounds of modhifi removal per block and kind", **COUNT)
    ridge: float = option(DEFAULT_RIDGE, "relative ridge of the Gram solves", **NONNEGATIVE)
    batch_size: int = option(8, "calibration sequences per forward", **COUNT)
    progress: bool = option(True, "a progress line per block")


def plan(block: DecoderBlock, opts: ModHiFiLLMOptions) -> tuple[int, int]:
    """(KV groups, FFN channels) removed from ``block``; InputError for a plan that empties a
    kind or cannot meet the parameter share."""
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
        c = round(
            (opts.params * block.params() - g * block.group_params()) / block.channel_params()
        )
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


def _steps(names: dict, block: DecoderBlock, groups: list[int], chans: list[int]) -> list[dict]:
    """Replayable steps (``graph.replay``) of the removals in ``block``."""
    steps = []

    def add(module, dim: str, idxs) -> None:
        steps.append(
            {
                "module": names[id(module)],
                "fn": f"prune_linear_{dim}_channels",
                "idxs": sorted(int(i) for i in idxs),
            }
        )

    if groups:
        cols, rows = block.group_columns(groups), block.kv_rows(groups)
        add(block.q, "out", cols)
        add(block.k, "out", rows)
        add(block.v, "out", rows)
        add(block.o, "in", cols)
    if chans:
        for m in block.ffn_in:
            add(m, "out", chans)
        add(block.ffn_out, "in", chans)
    return steps


class ModHiFiLLM(Editor):
    """Sequential structured pruning of a decoder LLM's KV groups and FFN channels with
    least-squares compensation. ``data``: token ids (a [N, T] integer tensor, a dict with
    ``input_ids`` / ``attention_mask``, or a list of them)."""

    name = "modhifi-llm"
    kind = "prune"
    needs_data = True
    uses_scores = False
    takes_tokens = True  # api: the data are token ids, checked here (not (x, y) batches)

    Options = ModHiFiLLMOptions

    def check(self, model, data) -> tuple[list[DecoderBlock], list[dict], list]:
        """Everything checked before any forward: the model's blocks, the plan, the tokens."""
        blocks = decoder_blocks(model)
        plans = [plan(b, self.options) for b in blocks]
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        vocab = emb.num_embeddings if emb is not None else 1 << 62
        return blocks, plans, token_batches(data, vocab, self.options.batch_size)

    def apply(self, model, scores, inputs):
        blocks, plans, batches = self.check(model, inputs.data)
        opts = self.options
        compensate = opts.compensate if opts.compensate is not None else opts.method == "modhifi"
        names = {id(m): n for n, m in model.named_modules()}
        params0 = sum(p.numel() for p in model.parameters())
        t0, per_block, steps = time.perf_counter(), [], []
        with eval_mode(model), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IllConditionedWarning)
            states, kwargs, masks = capture(model, blocks, batches)
            bar = tqdm(blocks, desc=f"{self.name} ({opts.method})", disable=not opts.progress)
            for block, (g, c) in zip(bar, plans):
                t = time.perf_counter()
                ga, gf = block_grams(block, states, kwargs[block.index], masks)
                groups, gloss = choose(block, "attn", opts.method, ga, g, opts.rounds, opts.ridge)
                chans, closs = choose(block, "ffn", opts.method, gf, c, opts.rounds, opts.ridge)
                if compensate:
                    refit(block, "attn", ga, groups, opts.ridge)
                    refit(block, "ffn", gf, chans, opts.ridge)
                steps += _steps(names, block, groups, chans)
                if groups:
                    keep_groups(block, sorted(set(range(block.num_kv_heads)) - set(groups)))
                if chans:
                    keep_channels(block, sorted(set(range(block.ffn_width)) - set(chans)))
                states = run_block(block, states, kwargs[block.index])
                per_block.append(
                    {
                        "block": block.path,
                        "kv_groups": sorted(groups),
                        "ffn_channels": len(chans),
                        "attn_loss": sum(gloss),
                        "ffn_loss": sum(closs),
                        "seconds": round(time.perf_counter() - t, 3),
                    }
                )
                bar.set_postfix(groups=len(groups), channels=len(chans))
        ill = [w for w in caught if issubclass(w.category, IllConditionedWarning)]
        for w in caught:  # others as they came; the ridge growths summed up once
            if w not in ill:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if ill:
            warnings.warn(
                f"{self.name}: the ridge was grown in {len(ill)} ill-conditioned solve(s)",
                IllConditionedWarning,
                stacklevel=2,
            )
        synced = sync_config(model, blocks)
        params = sum(p.numel() for p in model.parameters())
        info = {
            "params_before": params0,
            "params_after": params,
            "blocks": per_block,
            "block_params_removed": params0 - params,
            "config_describes_model": synced,
            "compensated": compensate,
            "seconds": round(time.perf_counter() - t0, 3),
            "tokens": sum(int(b["input_ids"].numel()) for b in batches),
        }
        changes = {s["module"]: s["idxs"] for s in steps}
        return self.record("removed", None, changes=changes, steps=steps, info=info)
