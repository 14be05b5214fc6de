"""The one place that speaks torch-pruning: dependency graphs, the pruning-function choice, the
Scores -> importance adapter, the pruner step loop (recording every structural change as a
replayable step), and the graph queries the scorers need (Taylor importance, consumer maps).

Steps are ``{"module": path, "fn": "prune_conv_out_channels", "idxs": [...]}`` in the order
torch-pruning applied them (indices relative to the layer at that moment), plus
``{"module": path, "attrs": {...}}`` for the attribute updates head pruning needs;
``replay_steps`` applies them to a freshly built dense model (``pluginedit.io``)."""
from __future__ import annotations

import re
from typing import Callable

import torch
import torch_pruning as tp
from torch import nn

from ..core.components import get_module, size_of
from ..core.errors import EditError, InputError
from ..core.outputs import output, primary
from ..core.scores import Scores

_FN_NAMES = {getattr(tp, n): n for n in dir(tp) if n.startswith("prune_")}
OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels)
IN_FNS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels, tp.prune_depthwise_conv_in_channels)
REPLAYABLE_ATTRS = ("num_attention_heads", "all_head_size")


def is_out(fn) -> bool:
    return any(fn == f for f in OUT_FNS)


def is_in(fn) -> bool:
    return any(fn == f for f in IN_FNS)


def out_fn(layer: nn.Module):
    """The pruning function that removes ``layer``'s output channels."""
    return tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels


def graph(model: nn.Module, example) -> tp.DependencyGraph:
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                     output_transform=_output_sum)
    except Exception as e:
        raise EditError(f"torch-pruning cannot trace this model ({type(e).__name__}: {e}); "
                        "use the 'mask' editor instead") from e


def _output_sum(out) -> torch.Tensor:
    return primary(out).sum()


def out_group(dg: tp.DependencyGraph, layer: nn.Module, idxs=None):
    """The group that removing ``idxs`` (default: all) of ``layer``'s outputs drags along."""
    try:
        return dg.get_pruning_group(layer, out_fn(layer),
                                    idxs=list(range(size_of(layer))) if idxs is None else list(idxs))
    except ValueError as e:    # the layer ran outside the traced graph (e.g. through .numpy())
        raise EditError(f"torch-pruning cannot trace this model: {e} (does the forward leave torch, "
                        "e.g. through .numpy()?); the 'mask' editor and the l1 scorer need no graph") from e


def count_ops_and_params(model: nn.Module, example) -> tuple[float, float]:
    """(MACs, parameters) as torch-pruning counts them."""
    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), float(params)


class ScoresImportance(tp.importance.Importance):
    """A torch-pruning importance reading pluginedit Scores: for each group, the scores of the
    group's scored out-channel layers, mapped onto the root indices, each layer normalised by
    its mean (so layers of different scale compete fairly under global pruning) and averaged."""

    def __init__(self, scores: Scores, paths: dict[nn.Module, str]):
        self.scores, self.paths = scores, paths

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total, hits = torch.zeros(len(group[0].root_idxs)), 0
        for i, (dep, idxs) in enumerate(group):
            path = self.paths.get(dep.layer)
            if path not in self.scores or not is_out(dep.pruning_fn):
                continue
            s = self.scores[path]
            s = s / s.abs().mean().clamp_min(1e-12)
            total[torch.as_tensor(group[i].root_idxs)] += s[torch.as_tensor(idxs)]
            hits += 1
        return total / hits if hits else None


def _paths(model: nn.Module) -> dict[nn.Module, str]:
    return {m: p for p, m in model.named_modules()}


def group_steps(group, paths: dict[nn.Module, str]) -> list[dict]:
    """The replayable steps of one group, in its order (parameter-free ops are skipped)."""
    steps = []
    for dep, idxs in group:
        path, name = paths.get(dep.target.module), _FN_NAMES.get(dep.handler)
        if path is not None and name is not None:
            steps.append({"module": path, "fn": name, "idxs": [int(i) for i in idxs]})
    return steps


def refuse_tied(model: nn.Module) -> None:
    """torch-pruning rebuilds each module's parameters, which would silently untie weights
    shared between modules: refuse instead."""
    seen: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen and seen[id(p)] != name:
            raise EditError(f"parameters {seen[id(p)]!r} and {name!r} are tied (one tensor): physical "
                            "pruning would untie them; use the 'mask' editor")
        seen.setdefault(id(p), name)


def run_pruner(model: nn.Module, example, importance, before_group: Callable | None = None,
               **pruner_kw) -> tuple[dict[str, list[int]], list[dict]]:
    """One MetaPruner step; ``before_group(group, paths)`` runs before each group is removed
    (compensation). Returns ({out-channel layer path: removed indices}, steps)."""
    paths = _paths(model)
    refuse_tied(model)
    try:
        pruner = tp.pruner.MetaPruner(model, example, importance=importance,
                                      output_transform=_output_sum, **pruner_kw)
    except Exception as e:
        raise EditError(f"torch-pruning cannot trace this model ({type(e).__name__}: {e}); "
                        "use the 'mask' editor instead") from e
    removed, steps = {}, []
    for group in pruner.step(interactive=True):
        if before_group is not None:
            before_group(group, paths)
        for dep, idxs in group:
            path = paths.get(dep.layer)
            if path is not None and is_out(dep.pruning_fn):
                removed.setdefault(path, []).extend(int(i) for i in idxs)
        steps += group_steps(group, paths)
        group.prune()
    return removed, steps


def prune_by_scores(model: nn.Module, example, scores: Scores, ratio: float, ignored=(),
                    global_pruning: bool = False, round_to: int | None = None,
                    before_group: Callable | None = None):
    """Remove the lowest-scored ``ratio`` of channels of every coupled group (or globally)."""
    modules = dict(model.named_modules())
    return run_pruner(model, example, ScoresImportance(scores, _paths(model)), before_group,
                      pruning_ratio=ratio, global_pruning=global_pruning, round_to=round_to,
                      ignored_layers=[modules[p] for p in ignored])


def remove_channels(model: nn.Module, example, indices: dict[str, list[int]]) -> list[dict]:
    """Physically remove the given out-channels (with everything coupled to them)."""
    refuse_tied(model)
    dg, paths, steps = graph(model, example), _paths(model), []
    for path, idx in indices.items():
        if idx:
            group = out_group(dg, get_module(model, path), sorted(idx))
            steps += group_steps(group, paths)
            group.prune()
    return steps


def remove_hidden_units(model: nn.Module, up: nn.Linear, down: nn.Linear, drop: list[int]) -> list[dict]:
    """Remove hidden units ``drop`` between two Linear layers (rows of ``up``, columns of
    ``down``): an FFN's neurons."""
    paths = _paths(model)
    steps = []
    for layer, fn in ((up, tp.prune_linear_out_channels), (down, tp.prune_linear_in_channels)):
        fn(layer, list(drop))
        steps.append({"module": paths[layer], "fn": _FN_NAMES[fn], "idxs": [int(i) for i in drop]})
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


def prune_heads(model: nn.Module, example, attentions: list[nn.Module], heads_per_layer: int,
                scores: list[torch.Tensor] | None = None) -> list[dict]:
    """Remove ``heads_per_layer`` heads of every attention block (BERT-style: ``query``, ``key``,
    ``value`` Linear, ``num_attention_heads``, ``attention_head_size``); ``scores`` one
    [num_heads] tensor per block (higher = keep) or None for group L2 magnitude. The blocks'
    head counts are updated (and recorded as steps)."""
    n_heads = attentions[0].num_attention_heads
    num_heads = {lin: a.num_attention_heads for a in attentions for lin in (a.query, a.key, a.value)}
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m not in num_heads]
    imp = tp.importance.GroupMagnitudeImportance(p=2) if scores is None else _HeadImportance(
        {lin: s.detach().float() for a, s in zip(attentions, scores) for lin in (a.query, a.key, a.value)})
    # MetaPruner removes ceil(ratio * heads) heads per layer; (n - 0.5) / heads rounds to n
    _, steps = run_pruner(model, example, imp, pruning_ratio=0.5, global_pruning=False,
                          ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True,
                          prune_head_dims=False, head_pruning_ratio=(heads_per_layer - 0.5) / n_heads)
    paths = _paths(model)
    for a in attentions:
        a.num_attention_heads = a.query.out_features // a.attention_head_size
        a.all_head_size = a.query.out_features
        steps.append({"module": paths[a], "attrs": {"num_attention_heads": a.num_attention_heads,
                                                    "all_head_size": a.all_head_size}})
    return steps


def uncoupled_layers(model: nn.Module, example, candidates: list[str]) -> list[str]:
    """The ``candidates`` whose out-channels can be removed alone: their group holds no other
    out-channel pruning (no residual add, no depthwise conv ties them)."""
    dg, out = graph(model, example), []
    for path in candidates:
        layer = get_module(model, path)
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            continue
        group = out_group(dg, layer, [0])
        if sum(1 for d, _ in group if is_out(d.pruning_fn) or d.pruning_fn == tp.prune_depthwise_conv_out_channels) == 1 \
                and not any(is_in(d.pruning_fn) and _grouped(d.layer) for d, _ in group):
            out.append(path)
    return out


def _grouped(layer: nn.Module) -> bool:
    """A grouped, not depthwise, convolution: removing arbitrary input channels would break its
    groups (torch-pruning indexes past the per-group weight)."""
    return isinstance(layer, nn.Conv2d) and 1 < layer.groups < layer.in_channels


def consumers(model: nn.Module, example, targets: list[str]) -> dict:
    """target path -> [(consumer path, producer channel idx, consumer input idx)] (follows
    residual adds, flattens and concatenations)."""
    dg, paths, out = graph(model, example), _paths(model), {}
    for path in targets:
        group = out_group(dg, get_module(model, path))
        out[path] = [(paths[dep.layer], torch.as_tensor(group[i].root_idxs), torch.as_tensor(idxs))
                     for i, (dep, idxs) in enumerate(group)
                     if is_in(dep.pruning_fn) and paths.get(dep.layer) is not None]
    return out


def group_scores(model: nn.Module, example, importance, targets: list[str]) -> dict:
    """A torch-pruning importance (an object, or "taylor") on the out-channel group of each
    target layer (gradients must already be in ``.grad`` for Taylor)."""
    if importance == "taylor":
        importance = tp.importance.TaylorImportance()
    dg = graph(model, example)
    return {p: importance(out_group(dg, get_module(model, p))).detach().float() for p in targets}


# Module kinds a recorded step may name, with their width along the pruned dimension
# (dimension "out" or "in"; kinds whose two dimensions are one width share a key).
_STEP_KINDS = {
    "conv": (nn.modules.conv._ConvNd, lambda m, d: m.out_channels if d == "out" else m.in_channels),
    "depthwise_conv": (nn.modules.conv._ConvNd, lambda m, d: m.out_channels),
    "linear": (nn.Linear, lambda m, d: m.out_features if d == "out" else m.in_features),
    "batchnorm": (nn.modules.batchnorm._BatchNorm, lambda m, d: m.num_features),
    "layernorm": (nn.LayerNorm, lambda m, d: m.normalized_shape[-1]),
    "groupnorm": (nn.GroupNorm, lambda m, d: m.num_channels),
    "instancenorm": (nn.modules.instancenorm._InstanceNorm, lambda m, d: m.num_features),
    "embedding": (nn.Embedding, lambda m, d: m.embedding_dim),
    "prelu": (nn.PReLU, lambda m, d: m.num_parameters),
    "multihead_attention": (nn.MultiheadAttention, lambda m, d: m.embed_dim),
}
_SEPARATE_DIMS = ("conv", "linear")       # out and in widths differ; the rest have one width
_STEP_FN = re.compile(r"^prune_([a-z_]+)_(out|in)_channels$")


def check_steps(model: nn.Module, steps: list[dict]) -> None:
    """Validate every step against the module it names before anything is changed: the module
    exists and is not the model itself, the function fits its kind, and the indices are in
    range, distinct and leave at least one channel (widths are followed through the steps)."""
    modules, widths = dict(model.named_modules()), {}
    for i, step in enumerate(steps):
        path = step.get("module")
        module = modules.get(path) if path else None
        if module is None:
            raise InputError(f"step {i} names module {str(path)[:80]!r}, which the model does not have"
                             + (" (the model itself cannot be a step's module)" if path == "" else ""))
        if "attrs" in step:
            _check_attrs(i, path, module, step["attrs"])
            continue
        fn, kind, dim = _step_fn(i, step)
        cls, width_of = _STEP_KINDS[kind]
        if not isinstance(module, cls):
            raise InputError(f"step {i} applies {fn} to {path!r}, a {type(module).__name__}")
        key = (path, dim if kind in _SEPARATE_DIMS else "")
        width = widths.get(key, width_of(module, dim))
        idxs = step["idxs"]
        if len(set(idxs)) != len(idxs):
            raise InputError(f"step {i} ({fn} on {path!r}) lists an index twice")
        if idxs and max(idxs) >= width:
            raise InputError(f"step {i} ({fn} on {path!r}) removes index {max(idxs)}, but the layer "
                             f"has {width} at that point")
        if idxs and len(idxs) >= width:
            raise InputError(f"step {i} ({fn} on {path!r}) removes all {width} channels")
        widths[key] = width - len(idxs)


def _step_fn(i: int, step: dict):
    fn = step.get("fn")
    match = _STEP_FN.match(fn) if isinstance(fn, str) else None
    if match is None or match.group(1) not in _STEP_KINDS or not hasattr(tp, fn):
        raise InputError(f"step {i} names an unknown pruning function {str(fn)[:80]!r}")
    return fn, match.group(1), match.group(2)


def _check_attrs(i: int, path: str, module: nn.Module, attrs: dict) -> None:
    bad = set(attrs) - set(REPLAYABLE_ATTRS)
    if bad:
        raise InputError(f"step {i} sets attributes {sorted(bad)[:5]} that are not replayable")
    for k, v in attrs.items():
        now = getattr(module, k, None)
        if not isinstance(now, int) or not 0 < v <= now:
            raise InputError(f"step {i} sets {k}={v} on {path!r}, which has "
                             f"{'no such attribute' if not isinstance(now, int) else now}")


def replay_steps(model: nn.Module, steps: list[dict]) -> None:
    """Apply recorded steps to ``model`` (a dense copy of the architecture they came from);
    all of them are checked first, so a bad step changes nothing."""
    check_steps(model, steps)
    modules = dict(model.named_modules())
    for i, step in enumerate(steps):
        module = modules[step["module"]]
        if "attrs" in step:
            for k, v in step["attrs"].items():
                setattr(module, k, int(v))
            continue
        try:
            getattr(tp, step["fn"])(module, step["idxs"])
        except Exception as e:
            raise InputError(f"step {i} ({step['fn']} on {step['module']!r}) failed: "
                             f"{type(e).__name__}: {str(e)[:200]}") from e


def call_shape(model: nn.Module, example) -> tuple:
    with torch.no_grad():
        return tuple(output(model, example).shape)
