"""Dependency graphs and the groups they couple: which torch-pruning function removes a layer's
outputs, the group a removal drags along, and the graph queries scorers and editors need (MACs and
parameters, Taylor importance per group, consumer maps, layers that can be pruned alone)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.group import Group

from ..core.components import get_module, size_of
from ..core.errors import EditError, InputError
from ..core.outputs import primary

# torch-pruning's pruning functions by the name a recorded step stores
FN_NAMES = {getattr(tp, n): n for n in dir(tp) if n.startswith("prune_")}
OUT_FNS = (
    tp.prune_conv_out_channels,
    tp.prune_linear_out_channels,
    tp.prune_depthwise_conv_out_channels,
)
IN_FNS = (
    tp.prune_conv_in_channels,
    tp.prune_linear_in_channels,
    tp.prune_depthwise_conv_in_channels,
)


def is_out(fn) -> bool:
    return any(fn == f for f in OUT_FNS)


def is_in(fn) -> bool:
    return any(fn == f for f in IN_FNS)


def out_fn(layer: nn.Module):
    """The pruning function that removes ``layer``'s output channels."""
    return (
        tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
    )


# torch-pruning follows index mappings through concatenations, splits and reshapes until a group
# closes; on some graphs (transformers' FocalNet modulation; torchvision's Swin and MaxViT, as
# issue 24 reports) it never does and the group grows without end. One group may take this long
# and this many dependencies (before merging) per module of the model; past either, the edit
# stops with an error naming the block.
GROUP_SECONDS = 60.0
GROUP_DEPS_PER_NODE = 20
_bounded = {"depth": 0}


class _OverBudget(BaseException):  # not an Exception: no handler inside torch-pruning eats it
    def __init__(self, group, seconds: float):
        super().__init__()
        self.group, self.seconds = group, seconds


@contextlib.contextmanager
def bounded(model: nn.Module, seconds: float | None = None):
    """Run torch-pruning's group building with a budget per group (``GROUP_SECONDS``, and
    ``GROUP_DEPS_PER_NODE`` dependencies per module of ``model``): a group that outgrows it is an
    ``EditError`` naming its root layer and the modules it keeps revisiting, never a hang."""
    if _bounded["depth"]:
        yield
        return
    limit = GROUP_SECONDS if seconds is None else seconds
    cap = GROUP_DEPS_PER_NODE * (sum(1 for _ in model.modules()) + 200)
    original = Group.add_dep

    def add_dep(group, dep, idxs):
        now = time.monotonic()
        start = group.__dict__.setdefault("_pluginedit_start", now)
        if len(group._group) >= cap or now - start > limit:
            raise _OverBudget(group, now - start)
        return original(group, dep, idxs)

    Group.add_dep, _bounded["depth"] = add_dep, 1
    try:
        yield
    except _OverBudget as e:
        raise EditError(_budget_message(model, e, limit)) from None
    finally:
        Group.add_dep, _bounded["depth"] = original, 0


def _budget_message(model: nn.Module, e: _OverBudget, limit: float) -> str:
    names = {**paths_of(model), **{p: n for n, p in model.named_parameters()}}
    items = e.group._group
    root = names.get(items[0].dep.target.module, "?") if items else "?"
    seen = Counter(names.get(it.dep.target.module) for it in items)
    busiest = ", ".join(repr(n) for n, _ in seen.most_common(3) if n)
    block = root.rpartition(".")[0] or root
    return (
        f"torch-pruning could not build the dependency groups of {block!r} within {limit:.0f} s: "
        f"the group of {root!r} grew to {len(items)} dependencies in {e.seconds:.1f} s without "
        f"closing (its index mappings through {busiest} never settle, so it would run for ever); "
        "torch-pruning cannot prune this architecture; the 'mask' editor needs no dependency graph"
    )


def graph(model: nn.Module, example) -> tp.DependencyGraph:
    try:
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example, output_transform=output_sum
        )
    except Exception as e:
        raise EditError(
            f"torch-pruning cannot trace this model ({type(e).__name__}: {e}); "
            "use the 'mask' editor instead"
        ) from e


def output_sum(out) -> torch.Tensor:
    return primary(out).sum()


def out_group(dg: tp.DependencyGraph, layer: nn.Module, idxs=None):
    """The group that removing ``idxs`` (default: all) of ``layer``'s outputs drags along."""
    try:
        with bounded(dg.model):
            return dg.get_pruning_group(
                layer,
                out_fn(layer),
                idxs=list(range(size_of(layer))) if idxs is None else list(idxs),
            )
    except ValueError as e:  # the layer ran outside the traced graph (e.g. through .numpy())
        raise EditError(
            f"torch-pruning cannot trace this model: {e} (does the forward leave torch, "
            "e.g. through .numpy()?); the 'mask' editor and the l1 scorer need no graph"
        ) from e
    except (EditError, InputError):
        raise
    except Exception as e:  # torch-pruning's index mappings misread this graph
        where = paths_of(dg.model).get(layer, "?")
        raise EditError(
            f"torch-pruning failed while building the dependency group of {where!r} "
            f"({type(e).__name__}: {str(e)[:200]}); it misreads this architecture: use the "
            "'mask' editor"
        ) from e


def count_ops_and_params(model: nn.Module, example) -> tuple[float, float]:
    """(MACs, parameters) as torch-pruning counts them."""
    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), float(params)


def paths_of(model: nn.Module) -> dict[nn.Module, str]:
    """Each module of ``model`` -> its path."""
    return {m: p for p, m in model.named_modules()}


def uncoupled_layers(model: nn.Module, example, candidates: list[str]) -> list[str]:
    """The ``candidates`` whose out-channels can be removed alone: their group holds no other
    out-channel pruning (no residual add, no depthwise conv ties them)."""
    dg, out = graph(model, example), []
    for path in candidates:
        layer = get_module(model, path)
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            continue
        group = out_group(dg, layer, [0])
        if sum(
            1
            for d, _ in group
            if is_out(d.pruning_fn) or d.pruning_fn == tp.prune_depthwise_conv_out_channels
        ) == 1 and not any(is_in(d.pruning_fn) and _grouped(d.layer) for d, _ in group):
            out.append(path)
    return out


def _grouped(layer: nn.Module) -> bool:
    """A grouped, not depthwise, convolution: removing arbitrary input channels would break its
    groups (torch-pruning indexes past the per-group weight)."""
    return isinstance(layer, nn.Conv2d) and 1 < layer.groups < layer.in_channels


def width(layer: nn.Module, fn) -> int | None:
    """How many channels ``fn`` (a conv / linear pruning function) can remove from ``layer``."""
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.in_channels if is_in(fn) else layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.in_features if is_in(fn) else layer.out_features
    return None


def misread(group) -> bool:
    """A group torch-pruning built from a graph it misreads (LeViT's attention: index mappings
    through reshapes it does not follow): a conv / linear member's indices run past its width."""
    for dep, idxs in group:
        n = width(dep.layer, dep.pruning_fn)
        if n is not None and len(idxs) and max(int(i) for i in idxs) >= n:
            return True
    return False


def consumers(model: nn.Module, example, targets: list[str]) -> dict:
    """target path -> [(consumer path, producer channel idx, consumer input idx)] (follows
    residual adds, flattens and concatenations). A consumer whose indices run past its inputs
    (torch-pruning misread the path to it) is left out: its numbering says nothing."""
    dg, paths, out = graph(model, example), paths_of(model), {}
    for path in targets:
        group = out_group(dg, get_module(model, path))
        out[path] = [
            (paths[dep.layer], torch.as_tensor(group[i].root_idxs), torch.as_tensor(idxs))
            for i, (dep, idxs) in enumerate(group)
            if is_in(dep.pruning_fn)
            and paths.get(dep.layer) is not None
            and max(idxs, default=0) < width(dep.layer, dep.pruning_fn)
        ]
    return out


def group_scores(model: nn.Module, example, importance, targets: list[str]) -> dict:
    """A torch-pruning importance (an object, or "taylor") on the out-channel group of each
    target layer (gradients must already be in ``.grad`` for Taylor)."""
    if importance == "taylor":
        importance = tp.importance.TaylorImportance()
    dg = graph(model, example)
    return {p: importance(out_group(dg, get_module(model, p))).detach().float() for p in targets}
