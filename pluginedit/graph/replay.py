"""Recorded structural steps checked and replayed: every step is validated against the module it
names before anything changes, then applied with the torch-pruning function it names (loading a
pruned model re-applies its steps to the dense architecture, ``pluginedit.io``)."""

from __future__ import annotations

import re

import torch
import torch_pruning as tp
from torch import nn

from ..core.errors import InputError

# Attributes an attention forward reads that head removal changes (``graph.attention``): the
# head count and the projections' width; a step may only lower them. Nothing else is settable.
REPLAYABLE_ATTRS = ("num_attention_heads", "num_heads", "all_head_size", "split_size", "nf", "nx")

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
_SEPARATE_DIMS = ("conv", "linear")  # out and in widths differ; the rest have one width
_STEP_FN = re.compile(r"^prune_([a-z_]+)_(out|in)_channels$")


def check_steps(model: nn.Module, steps: list[dict]) -> None:
    """Validate every step against the module (or bare parameter) it names before anything is
    changed: the module exists and is not the model itself, the function fits its kind (a
    parameter step: the parameter exists outside the layers that have pruning functions, and
    the dimension is one of its own), attributes are allow-listed and only lowered, and the
    indices are in range, distinct and leave at least one channel (widths are followed through
    the steps)."""
    modules, widths = dict(model.named_modules()), {}
    for i, step in enumerate(steps):
        if "parameter" in step:
            _check_parameter(i, modules, step, widths)
            continue
        path = step.get("module")
        module = modules.get(path) if path else None
        if module is None:
            raise InputError(
                f"step {i} names module {str(path)[:80]!r}, which the model does not have"
                + (" (the model itself cannot be a step's module)" if path == "" else "")
            )
        if "attrs" in step:
            _check_attrs(i, path, module, step["attrs"])
            continue
        fn, kind, dim = _step_fn(i, step)
        cls, width_of = _STEP_KINDS[kind]
        if not isinstance(module, cls):
            raise InputError(f"step {i} applies {fn} to {path!r}, a {type(module).__name__}")
        key = (path, dim if kind in _SEPARATE_DIMS else "")
        width = widths.get(key, width_of(module, dim))
        widths[key] = _check_idxs(f"step {i} ({fn} on {path!r})", step["idxs"], width, "layer")


def _check_idxs(what: str, idxs: list, width: int, holder: str) -> int:
    """The width left after removing ``idxs`` (distinct, in range, not all of ``width``)."""
    if len(set(idxs)) != len(idxs):
        raise InputError(f"{what} lists an index twice")
    if idxs and max(idxs) >= width:
        raise InputError(
            f"{what} removes index {max(idxs)}, but the {holder} has {width} at that point"
        )
    if idxs and len(idxs) >= width:
        raise InputError(f"{what} removes all {width} channels")
    return width - len(idxs)


def _parameter(modules: dict, name) -> tuple[nn.Module, str, nn.Parameter] | None:
    """(owner module, attribute, parameter) of a bare parameter's dotted ``name``, or None."""
    if not isinstance(name, str):
        return None
    owner_path, _, attr = name.rpartition(".")
    owner = modules.get(owner_path)
    p = owner._parameters.get(attr) if owner is not None else None
    return (owner, attr, p) if isinstance(p, nn.Parameter) else None


def _check_parameter(i: int, modules: dict, step: dict, widths: dict) -> None:
    """A bare-parameter step (``{"parameter", "dim", "idxs"}``, torch-pruning's
    prune_parameter_*): the parameter exists, is not owned by a layer that has its own pruning
    function, and the dimension and indices fit it."""
    name, dim = step.get("parameter"), step.get("dim")
    found = _parameter(modules, name)
    if found is None:
        raise InputError(
            f"step {i} prunes parameter {str(name)[:80]!r}, which the model does not have"
        )
    owner, _, p = found
    kinds = tuple(cls for cls, _ in _STEP_KINDS.values())
    if isinstance(owner, kinds):
        raise InputError(
            f"step {i} prunes parameter {name!r} of a {type(owner).__name__} directly; a layer's "
            "parameters change only through its own pruning function"
        )
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim < p.dim():
        raise InputError(
            f"step {i} prunes dimension {str(dim)[:20]} of parameter {name!r}, which has "
            f"{p.dim()} dimensions"
        )
    key = (name, dim)
    width = widths.get(key, p.shape[dim])
    what = f"step {i} (parameter {name!r}, dimension {dim})"
    widths[key] = _check_idxs(what, step["idxs"], width, "parameter")


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
            raise InputError(
                f"step {i} sets {k}={v} on {path!r}, which has "
                f"{'no such attribute' if not isinstance(now, int) else now}"
            )


def replay_steps(model: nn.Module, steps: list[dict]) -> None:
    """Apply recorded steps to ``model`` (a dense copy of the architecture they came from);
    all of them are checked first, so a bad step changes nothing."""
    check_steps(model, steps)
    modules = dict(model.named_modules())
    for i, step in enumerate(steps):
        if "parameter" in step:
            _prune_parameter(modules, step)
            continue
        module = modules[step["module"]]
        if "attrs" in step:
            for k, v in step["attrs"].items():
                setattr(module, k, int(v))
            continue
        try:
            getattr(tp, step["fn"])(module, step["idxs"])
        except Exception as e:
            raise InputError(
                f"step {i} ({step['fn']} on {step['module']!r}) failed: "
                f"{type(e).__name__}: {str(e)[:200]}"
            ) from e


def _prune_parameter(modules: dict, step: dict) -> None:
    """Remove ``idxs`` along ``dim`` of a bare parameter (as torch-pruning's parameter pruner
    does: a new Parameter in its place, ``requires_grad`` kept)."""
    owner, attr, p = _parameter(modules, step["parameter"])
    drop, dim = set(step["idxs"]), step["dim"]
    keep = torch.tensor([j for j in range(p.shape[dim]) if j not in drop], device=p.device)
    with torch.no_grad():
        kept = p.data.index_select(dim, keep)
    setattr(owner, attr, nn.Parameter(kept, requires_grad=p.requires_grad))
