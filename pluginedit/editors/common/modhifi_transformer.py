"""ModHiFi-P on a BERT-family transformer (ALGORITHMS.md 4.3, LLM scoring): per layer, remove the
lowest-scored FFN neurons and attention heads, after refitting the layer that reads them (the
FFN down projection, the attention output projection) by least squares on the kept inputs.
Removal goes through torch-pruning (``pluginedit.graph``) and is recorded as replayable steps;
the config's ``intermediate_size`` follows a uniform FFN pruning so ``save_pretrained`` stays
loadable."""

from __future__ import annotations

import torch

from ...core.components import get_module, transformer_units, unit_consumer
from ...core.errors import InputError
from ...graph.pruner import prune_heads, remove_hidden_units
from ...scorers.fidelity import collect_grams, unit_scores
from .compensate import compensate


def bert_units(model) -> list[str]:
    """The units this path prunes: a BERT-family layout (``attention.self`` read by
    ``attention.output.dense``, ``intermediate.dense`` by ``output.dense``) with at least one
    FFN (``core.components.transformer_units``). Other blocks with query/key/value projections
    go through the dependency graph like any other model, whose attention blocks lose whole
    heads (``pluginedit.graph.attention``)."""
    return transformer_units(model)


def _lowest(scores: torch.Tensor, n: int) -> list[int]:
    return torch.argsort(scores, stable=True)[:n].sort().values.tolist()


def _keep(n: int, drop: list[int], block: int = 1) -> torch.Tensor:
    keep = torch.ones(n * block, dtype=torch.bool)
    for i in drop:
        keep[i * block : (i + 1) * block] = False
    return keep


def prune_transformer(
    model,
    scores,
    inputs,
    ratio: float,
    heads: int,
    compensate_: bool,
    ridge: float,
    calib_samples: int,
) -> dict:
    """Edit ``model`` in place; returns {"changes", "steps", "info"} for the record."""
    units = bert_units(model)
    attns = [p for p in units if p.endswith("attention.self")]
    ffns = [p for p in units if p not in attns]
    if heads and not 0 <= heads < get_module(model, attns[0]).num_attention_heads:
        raise InputError(
            f"heads must lie in [0, {get_module(model, attns[0]).num_attention_heads})"
        )
    grams = collect_grams(
        model, inputs.data, {unit_consumer(model, p) for p in units}, max_samples=calib_samples
    )
    score = {
        p: (
            scores[p]
            if scores is not None and p in scores
            else unit_scores(model, p, grams[unit_consumer(model, p)])
        )
        for p in units
    }
    changes, steps = {}, []
    for p in ffns:  # FFN neurons: columns of the down projection
        up, down = get_module(model, p), get_module(model, unit_consumer(model, p))
        drop = _lowest(score[p], int(ratio * up.out_features))
        if drop and compensate_:
            compensate(
                down, grams[unit_consumer(model, p)], _keep(up.out_features, drop), ridge=ridge
            )
        steps += remove_hidden_units(model, up, down, drop)
        changes[p] = drop
    if heads:
        steps += _prune_heads(
            model, attns, heads, score, grams, compensate_, ridge, inputs.example, changes
        )
    sizes = {get_module(model, p).out_features for p in ffns}
    if len(sizes) == 1 and hasattr(model, "config"):
        model.config.intermediate_size = sizes.pop()
    return {
        "changes": changes,
        "steps": steps,
        "info": {
            "ffn_neurons_removed": sum(len(changes.get(p, [])) for p in ffns),
            "heads_removed_per_layer": heads,
        },
    }


def _prune_heads(
    model, attns, heads, score, grams, compensate_, ridge, example, changes
) -> list[dict]:
    """Refit each attention output projection on its kept head columns, then remove the heads."""
    modules = [get_module(model, p) for p in attns]
    for p, att in zip(attns, modules):
        drop = _lowest(score[p], heads)
        changes[p] = drop
        if compensate_:
            out = unit_consumer(model, p)
            compensate(
                get_module(model, out),
                grams[out],
                _keep(att.num_attention_heads, drop, att.attention_head_size),
                ridge=ridge,
            )
    return prune_heads(model, example, modules, heads, [score[p] for p in attns])
