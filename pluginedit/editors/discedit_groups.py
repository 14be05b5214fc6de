"""Coupled channel groups for the DisCEdit editors, and witness scores per group.

A residual add ties channel j of every layer that writes into the stream (the stem, each block's
last conv, each projection shortcut): zeroing or removing channel j of one of them leaves the
others carrying it. The editors therefore score and edit a *group* (torch-pruning's dependency
group of a layer's out-channels, ``graph.groups.out_group``): its members are the out-channel
layers of the group, each with the member channel that each root channel maps to.

Group score of a channel = max over the members of the member's witness bound. Each bound is a
lower bound on the total variation between the class-conditional laws of that member's map
(ALGORITHMS.md §3.1); editing the group channel removes all the members' maps at once, and the
TV of their joint law is at least the TV of any one of them (data processing), so the max is the
tightest lower bound the per-member bounds give on what the group channel discriminates (the
mean is a bound too, but looser, and it dilutes a channel that discriminates at one depth only).
``reduce="mean"`` is kept for comparison. A residual stream is the sum of its members' outputs,
which no member's own map shows: the inputs of the layers that read the group's channels
(``readers``: the next blocks' convs, the head) are observed too, and enter the max the same way
(the stream is a function of the group's channels, so its bound is a lower bound as well).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..capture import Request, collect
from ..capture.hookpoints import resolve, resolve_auto
from ..core.components import get_module, groups, size_of
from ..core.errors import EditError, InputError
from ..graph.groups import graph, is_in, is_out, out_group, paths_of
from ..scorers.witness import witness_scores
from ..stats import ClassMoments

REDUCES = ("max", "mean")


@dataclass
class ChannelGroup:
    """Out-channels coupled through residual adds (or one layer alone). ``members``: layer path ->
    [size] long tensor, the member's channel for each root channel (-1: none); ``readers``: the
    same for the layers that read the group's channels (their inputs: for a residual group, the
    stream itself, which no member's output is)."""

    root: str
    size: int
    members: dict[str, torch.Tensor] = field(default_factory=dict)
    readers: dict[str, torch.Tensor] = field(default_factory=dict)

    def expand(self, idx) -> dict[str, list[int]]:
        """Root channels ``idx`` -> {member path: its channels}."""
        sel = torch.as_tensor(list(idx), dtype=torch.long)
        out = {}
        for path, m in self.members.items():
            got = m[sel]
            got = got[got >= 0]
            if len(got):
                out[path] = sorted(got.tolist())
        return out


def _grouped(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and 1 < layer.groups < layer.in_channels


def _from_graph(model, dg, paths, layer: nn.Module, path: str, skip: set) -> ChannelGroup | None:
    """The group of ``layer``'s out-channels, or None where it cannot be edited whole (it holds a
    skipped layer, e.g. the head, or a grouped conv torch-pruning would break)."""
    known = groups(model)
    group = out_group(dg, layer)
    found = ChannelGroup(path, size_of(layer))
    for i, (dep, idxs) in enumerate(group):
        p = paths.get(dep.layer)
        if is_in(dep.pruning_fn):
            if _grouped(dep.layer):
                return None
            if p is not None and _plain(dep.layer) and len(idxs) == len(group[i].root_idxs):
                _map(found, found.readers, p, group[i].root_idxs, idxs)
            continue
        if not is_out(dep.pruning_fn):
            continue
        if p is None or p not in known or p in skip or _grouped(dep.layer):
            return None
        _map(found, found.members, p, group[i].root_idxs, idxs)
    found.members.setdefault(path, torch.arange(found.size))
    return found


def _plain(layer: nn.Module) -> bool:
    """A layer whose input channels are the group's channels one to one (not a Linear reading a
    flattened C x H x W map, not a depthwise conv: its output is a member already)."""
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)


def _map(group: ChannelGroup, into: dict, path: str, root_idxs, idxs) -> None:
    m = into.setdefault(path, torch.full((group.size,), -1, dtype=torch.long))
    m[torch.as_tensor(root_idxs, dtype=torch.long)] = torch.as_tensor(idxs, dtype=torch.long)


def coupled_groups(
    model: nn.Module, example, candidates: list[str], skip=(), traced: bool = True
) -> list[ChannelGroup]:
    """The coupled groups of ``candidates`` (each group once, in the order of its first
    candidate), leaving out groups that hold a layer of ``skip``. ``traced=False``: where
    torch-pruning cannot trace the model, every candidate is its own group instead of an error
    (zeroing needs no graph; removal does)."""
    skip = set(skip)
    try:
        dg = graph(model, example)
    except EditError:
        if traced:
            raise
        return [single(model, p) for p in candidates if p not in skip]
    paths, seen, out = paths_of(model), set(), []
    for path in candidates:
        if path in seen or path in skip:
            continue
        layer = get_module(model, path)
        if _grouped(layer) or (isinstance(layer, nn.Conv2d) and layer.groups > 1):
            continue  # a depthwise conv goes with its producer's group
        g = _from_graph(model, dg, paths, layer, path, skip)
        if g is not None:
            seen.update(g.members)
            out.append(g)
    return out


def single(model, path: str) -> ChannelGroup:
    n = size_of(get_module(model, path))
    return ChannelGroup(path, n, {path: torch.arange(n)})


def _request(model, layer: str, hook: str, num_classes: int, gamma: float) -> Request:
    module, where = resolve_auto(model, layer) if hook == "auto" else resolve(model, layer, hook)
    stat = ClassMoments(size_of(get_module(model, layer)), num_classes, gamma=gamma)
    return Request(module, stat, where)


def _reader_request(model, layer: str, num_classes: int, gamma: float) -> Request:
    m = get_module(model, layer)
    width = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
    return Request(layer, ClassMoments(width, num_classes, gamma=gamma), "input")


def member_scores(
    model,
    group: ChannelGroup,
    data,
    num_classes,
    hook,
    gamma,
    max_samples,
    batch_size,
    active_only,
    readers: bool = True,
    **witness,
) -> dict[tuple[str, str], torch.Tensor]:
    """Witness scores [C] of each member's output (at ``hook``) and, with ``readers``, of each
    reader's input, on the model as it is now, from one pass; keyed ("out"|"in", path).
    ``active_only`` zeroes the score of channels less active (larger exp(-gamma ||A||)) on
    ``witness["target_class"]`` than on the rest: removing those would not remove its evidence."""
    reqs = {("out", p): _request(model, p, hook, num_classes, gamma) for p in group.members}
    if readers and len(group.members) > 1:  # a residual stream: observe it where it is read
        reqs |= {("in", p): _reader_request(model, p, num_classes, gamma) for p in group.readers}
    got = collect(model, data, reqs.values(), num_classes, batch_size, max_samples, stop_early=True)
    out = {}
    for p, req in reqs.items():
        stat = got[req]
        r = witness_scores(stat, **witness)
        if active_only:
            k = witness["target_class"]
            n_rest, s_rest = stat.rest()
            e_k, e_rest = stat.sums[k, :, 4] / stat.count[k], s_rest[k, :, 4] / n_rest[k]
            r = torch.where(e_k < e_rest, r, torch.zeros_like(r))
        out[p] = r
    return out


def group_scores(group: ChannelGroup, per_layer: dict, reduce: str = "max") -> torch.Tensor:
    """[size] score of each root channel from its members' (and readers') scores
    (``member_scores``; see the module docstring)."""
    if reduce not in REDUCES:
        raise InputError(f"unknown group reduction {reduce!r}; known: {REDUCES}")
    maps = {("out", p): m for p, m in group.members.items()}
    maps |= {("in", p): m for p, m in group.readers.items()}
    cols = []
    for key, s in per_layer.items():
        m, s = maps[key], s.double()
        col = torch.full((group.size,), float("nan"), dtype=torch.float64)
        col[m >= 0] = s[m[m >= 0]]
        cols.append(col)
    stack = torch.stack(cols)
    if reduce == "max":
        return stack.nan_to_num(float("-inf")).amax(0).clamp_min(0)
    return stack.nanmean(0).nan_to_num(0.0)
