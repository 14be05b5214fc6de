"""The pruner loop: torch-pruning's MetaPruner driven by pluginedit Scores (or a head score),
channel, hidden-unit and attention-head removal, each structural change recorded as a replayable
step.

Steps are ``{"module": path, "fn": "prune_conv_out_channels", "idxs": [...]}`` in the order
torch-pruning applied them (indices relative to the layer at that moment), plus
``{"module": path, "attrs": {...}}`` for the attribute updates head pruning needs;
``graph.replay.replay_steps`` applies them to a freshly built dense model (``pluginedit.io``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from ..core.components import get_module
from ..core.errors import EditError, InputError
from ..core.scores import Scores
from . import attention
from .groups import FN_NAMES, bounded, graph, is_out, misread, out_group, output_sum, paths_of


class ScoresImportance(tp.importance.Importance):
    """A torch-pruning importance reading pluginedit Scores: for each group, the scores of the
    group's scored out-channel layers, mapped onto the root indices, each layer normalised by
    its mean (so layers of different scale compete fairly under global pruning) and averaged.
    An attention block scored per head (``blocks``: projection -> block) lends each head's score
    to the head's channels of its query, key and value projections."""

    def __init__(self, scores: Scores, paths: dict[nn.Module, str], blocks=()):
        self.scores, self.paths = scores, paths
        self.blocks = {lin: b for b in blocks if b.path in scores for lin in b.qkv}

    def _of(self, layer: nn.Module) -> torch.Tensor | None:
        path = self.paths.get(layer)
        if path in self.scores:
            return self.scores[path]
        b = self.blocks.get(layer)
        if b is None:
            return None
        return self.scores[b.path].repeat_interleave(layer.out_features // len(self.scores[b.path]))

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        if misread(group):  # indices past a layer's width; None: MetaPruner leaves it whole
            return None
        total, hits = torch.zeros(len(group[0].root_idxs)), 0
        for i, (dep, idxs) in enumerate(group):
            s = self._of(dep.layer) if is_out(dep.pruning_fn) else None
            if s is None:
                continue
            s = s / s.abs().mean().clamp_min(1e-12)
            total[torch.as_tensor(group[i].root_idxs)] += s[torch.as_tensor(idxs)]
            hits += 1
        return total / hits if hits else None


def group_steps(group, paths: dict[nn.Module, str], params: dict | None = None) -> list[dict]:
    """The replayable steps of one group, in its order (parameter-free ops are skipped): a
    module's pruning function, or for a bare ``nn.Parameter`` (``params``: parameter -> its
    name) ``{"parameter": name, "dim": d, "idxs": [...]}``."""
    steps = []
    for dep, idxs in group:
        target = dep.target.module
        if isinstance(target, nn.Parameter):
            name = (params or {}).get(target)
            if name is None:
                raise EditError(
                    "torch-pruning pruned a parameter the model does not name "
                    f"(shape {tuple(target.shape)}); the edit cannot be recorded"
                )
            dim = int(dep.target.pruning_dim) % target.dim()
            steps.append({"parameter": name, "dim": dim, "idxs": [int(i) for i in idxs]})
            continue
        path, name = paths.get(target), FN_NAMES.get(dep.handler)
        if path is not None and name is not None:
            steps.append({"module": path, "fn": name, "idxs": [int(i) for i in idxs]})
    return steps


def parameter_names(model: nn.Module) -> dict:
    """Each parameter of ``model`` -> its name (torch-pruning replaces the bare parameters it
    prunes, so this is taken again before each group)."""
    return {p: n for n, p in model.named_parameters()}


def refuse_tied(model: nn.Module) -> None:
    """torch-pruning rebuilds each module's parameters, which would silently untie weights
    shared between modules: refuse instead."""
    seen: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen and seen[id(p)] != name:
            raise EditError(
                f"parameters {seen[id(p)]!r} and {name!r} are tied (one tensor): physical "
                "pruning would untie them; use the 'mask' editor"
            )
        seen.setdefault(id(p), name)


def run_pruner(
    model: nn.Module,
    example,
    importance,
    before_group: Callable | None = None,
    after_group: Callable | None = None,
    **pruner_kw,
) -> tuple[dict[str, list[int]], list[dict]]:
    """One MetaPruner step; ``before_group(group, paths)`` runs before each group is removed
    (compensation), ``after_group(group, paths)`` after it (``graph.probe``). Attention blocks
    (``graph.attention``) lose whole heads, their head counts updated and recorded, unless the
    caller gives ``num_heads`` itself. Returns ({out-channel layer path, or attention block path:
    removed indices (heads for a block)}, steps)."""
    paths = paths_of(model)
    refuse_tied(model)
    found = [] if "num_heads" in pruner_kw else attention.blocks(model)
    ignored = {m for layer in pruner_kw.get("ignored_layers") or () for m in layer.modules()}
    kw = attention.pruner_kwargs(found, pruner_kw.get("pruning_ratio", 0.5), ignored) | pruner_kw
    with bounded(model):
        try:
            pruner = tp.pruner.MetaPruner(
                model, example, importance=importance, output_transform=output_sum, **kw
            )
        except EditError:
            raise
        except Exception as e:
            raise EditError(
                f"torch-pruning cannot trace this model ({type(e).__name__}: {e}); "
                "use the 'mask' editor instead"
            ) from e
        removed, steps = {}, []
        for group in _groups(pruner, paths):
            if before_group is not None:
                before_group(group, paths)
            _note_removed(group, paths, found, removed)
            steps += group_steps(group, paths, parameter_names(model))
            _prune(group, paths)
            if after_group is not None:
                after_group(group, paths)
    return removed, steps + attention.update_heads(found)


def _root(group, paths) -> str:
    return paths.get(group[0].dep.target.module, "?") if len(group) else "?"


def _groups(pruner, paths):
    """MetaPruner's groups; its own failures (index errors on graphs it misreads) are an
    ``EditError`` naming where, never a raw exception."""
    it, group = pruner.step(interactive=True), None
    while True:
        try:
            group = next(it)
        except StopIteration:
            return
        except (EditError, InputError):  # ours (an importance's), not torch-pruning's
            raise
        except Exception as e:
            where = f" after the group of {_root(group, paths)!r}" if group is not None else ""
            raise EditError(
                f"torch-pruning failed while ranking the dependency groups{where} "
                f"({type(e).__name__}: {str(e)[:200]}); it misreads this architecture: use the "
                "'mask' editor"
            ) from e
        yield group


def _prune(group, paths) -> None:
    try:
        group.prune()
    except Exception as e:
        raise EditError(
            f"torch-pruning failed while removing the group of {_root(group, paths)!r} "
            f"({type(e).__name__}: {str(e)[:200]}); use the 'mask' editor"
        ) from e


def _note_removed(group, paths, found, removed) -> None:
    """Record the out-channels a group removes per layer, and the heads per attention block."""
    heads = {b.qkv[0]: b for b in found}
    for dep, idxs in group:
        path = paths.get(dep.layer)
        if path is None or not is_out(dep.pruning_fn):
            continue
        removed.setdefault(path, []).extend(int(i) for i in idxs)
        b = heads.get(dep.layer)
        if b is not None:
            removed.setdefault(b.path, []).extend(sorted({int(i) // b.head_dim for i in idxs}))


def prune_by_scores(
    model: nn.Module,
    example,
    scores: Scores,
    ratio: float,
    ignored=(),
    global_pruning: bool = False,
    round_to: int | None = None,
    before_group: Callable | None = None,
    after_group: Callable | None = None,
):
    """Remove the lowest-scored ``ratio`` of channels of every coupled group (or globally)."""
    modules = dict(model.named_modules())
    return run_pruner(
        model,
        example,
        ScoresImportance(scores, paths_of(model), attention.blocks(model)),
        before_group,
        after_group,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        round_to=round_to,
        ignored_layers=[modules[p] for p in ignored],
    )


def remove_channels(model: nn.Module, example, indices: dict[str, list[int]]) -> list[dict]:
    """Physically remove the given out-channels (with everything coupled to them)."""
    refuse_tied(model)
    dg, paths, steps = graph(model, example), paths_of(model), []
    for path, idx in indices.items():
        if idx:
            group = out_group(dg, get_module(model, path), sorted(idx))
            steps += group_steps(group, paths, parameter_names(model))
            _prune(group, paths)
    return steps


def remove_hidden_units(
    model: nn.Module, up: nn.Linear, down: nn.Linear, drop: list[int]
) -> list[dict]:
    """Remove hidden units ``drop`` between two Linear layers (rows of ``up``, columns of
    ``down``): an FFN's neurons."""
    paths = paths_of(model)
    steps = []
    for layer, fn in ((up, tp.prune_linear_out_channels), (down, tp.prune_linear_in_channels)):
        fn(layer, list(drop))
        steps.append({"module": paths[layer], "fn": FN_NAMES[fn], "idxs": [int(i) for i in drop]})
    return steps


class _HeadImportance:
    """For the q/k/v groups: each head's score on all its channels (MetaPruner averages channel
    importance per head, so heads rank by the given score)."""

    def __init__(self, per_query: dict):
        self.per_query = per_query

    def __call__(self, group):
        for dep, _ in group:
            s = self.per_query.get(dep.layer)
            if s is not None:
                return s.repeat_interleave(dep.layer.out_features // len(s))
        return None


def prune_heads(
    model: nn.Module,
    example,
    attentions: list[nn.Module],
    heads_per_layer: int,
    scores: list[torch.Tensor] | None = None,
) -> list[dict]:
    """Remove ``heads_per_layer`` heads of every attention block (BERT-style: ``query``, ``key``,
    ``value`` Linear, ``num_attention_heads``, ``attention_head_size``); ``scores`` one
    [num_heads] tensor per block (higher = keep) or None for group L2 magnitude. The blocks'
    head counts are updated (and recorded as steps)."""
    n_heads = attentions[0].num_attention_heads
    num_heads = {
        lin: a.num_attention_heads for a in attentions for lin in (a.query, a.key, a.value)
    }
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m not in num_heads]
    imp = (
        tp.importance.GroupMagnitudeImportance(p=2)
        if scores is None
        else _HeadImportance(
            {
                lin: s.detach().float()
                for a, s in zip(attentions, scores)
                for lin in (a.query, a.key, a.value)
            }
        )
    )
    # MetaPruner removes ceil(ratio * heads) heads per layer; (n - 0.5) / heads rounds to n
    _, steps = run_pruner(
        model,
        example,
        imp,
        pruning_ratio=0.5,
        global_pruning=False,
        ignored_layers=ignored,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=(heads_per_layer - 0.5) / n_heads,
    )
    paths = paths_of(model)
    for a in attentions:
        a.num_attention_heads = a.query.out_features // a.attention_head_size
        a.all_head_size = a.query.out_features
        steps.append(
            {
                "module": paths[a],
                "attrs": {
                    "num_attention_heads": a.num_attention_heads,
                    "all_head_size": a.all_head_size,
                },
            }
        )
    return steps
