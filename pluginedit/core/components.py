"""Component layers of a model: conv and linear layers whose output units are the components,
addressed by module path."""

from __future__ import annotations

import contextlib
import weakref
from typing import cast

import torch
from torch import nn

from .batches import call
from .errors import InputError
from .outputs import primary, tensors


def is_attention(module: nn.Module) -> bool:
    """A multi-head self-attention block of the BERT family: query/key/value projections and
    a head count (its components are the heads)."""
    return all(
        isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value")
    ) and isinstance(getattr(module, "num_attention_heads", None), int)


def kind_of(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        return "conv_out"
    if isinstance(module, nn.Linear):
        return "linear_out"
    if is_attention(module):
        return "attn_head"
    return None


def groups(model: nn.Module) -> dict[str, nn.Module]:
    """Module paths of the layers whose output units are components, in forward-definition order."""
    return {name: m for name, m in model.named_modules() if kind_of(m) is not None}


def size_of(module: nn.Module) -> int:
    """How many components a layer has: attention heads, output channels or output features."""
    # nn.Module types the attributes it does not declare as Tensor | Module: the casts say what
    # they are (is_attention checked the head count is an int; out_features is nn.Linear's)
    if is_attention(module):
        return cast(int, module.num_attention_heads)
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return cast(int, module.out_features)


def transformer_units(model: nn.Module) -> list[str]:
    """The attention blocks and FFN up projections (``intermediate.dense``) of a BERT-family
    model, layer by layer: the units a transformer is pruned by. Empty for other models, and
    for attention blocks not laid out like BERT's (BEiT-style ``attention.attention``,
    MobileViT, PVT without an ``intermediate`` FFN): those go through the dependency graph."""
    out = []
    for path, m in model.named_modules():
        if is_attention(m):
            out.append(path)
        elif path.endswith("intermediate.dense") and isinstance(m, nn.Linear):
            out.append(path)
    try:
        for p in out:
            unit_consumer(model, p)
    except (KeyError, InputError):
        return []
    return out if any(p.endswith("intermediate.dense") for p in out) else []


def unit_consumer(model: nn.Module, path: str) -> str:
    """The Linear that reads a transformer unit's output: the attention output projection of a
    self-attention block (``X.attention.self`` -> ``X.attention.output.dense``), the down
    projection of an FFN (``X.intermediate.dense`` -> ``X.output.dense``)."""
    if path.endswith("attention.self"):
        cand = path[: -len("self")] + "output.dense"
    elif path.endswith("intermediate.dense"):
        cand = path[: -len("intermediate.dense")] + "output.dense"
    else:
        raise KeyError(f"{path!r} is not a transformer unit")
    get_module(model, cand)
    return cand


def get_module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as e:
        known = ", ".join(groups(model)) or "(none)"
        raise KeyError(f"no module {path!r} in the model; layers with components: {known}") from e


def check_targets(model: nn.Module, targets, what: str = "targets") -> tuple[str, ...]:
    """``targets`` as a tuple of paths, each of a component layer of ``model``."""
    known = groups(model)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    missing = [t for t in targets if t not in known]
    if missing:
        raise InputError(
            f"{what} {missing} are not conv/linear layers of the model; known: {list(known)}"
        )
    return targets


@contextlib.contextmanager
def modes_kept(model: nn.Module):
    """Run, then give each module its own training flag back. Modules the block removed are
    gone; a module it added takes the flag of the module that holds it."""
    flags = {id(m): (m, m.training) for m in model.modules()}  # each module held: its id not reused
    try:
        yield model
    finally:
        modes: dict[str, bool] = {}  # path -> flag given; parents come before their children
        for path, m in model.named_modules():
            parent = modes.get(path.rpartition(".")[0], flags[id(model)][1])
            m.training = flags[id(m)][1] if id(m) in flags else parent
            modes[path] = m.training


@contextlib.contextmanager
def grads_kept(model: nn.Module):
    """Run with no ``.grad`` on any parameter (a backward inside adds to none of the user's
    gradients), then give each parameter that is still there with its shape its own ``.grad``
    back (the same tensor, or None); parameters an edit replaced or resized get None."""
    # weak: a parameter the edit replaces is freed as it goes (a block-by-block pruner's
    # memory stays flat in depth); one still alive is compared by id, which it still owns
    kept = [(weakref.ref(p), p.grad) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    try:
        yield model
    finally:
        now = {id(p) for p in model.parameters()}
        for ref, grad in kept:
            if (p := ref()) is not None:
                fits = id(p) in now and (grad is None or grad.shape == p.shape)
                p.grad = grad if fits else None


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run with every module in eval mode (BatchNorm reads its running statistics instead of
    updating them, dropout is off), then restore each module's own training flag."""
    with modes_kept(model):
        model.eval()
        yield model


@contextlib.contextmanager
def heads_recorder(model: nn.Module):
    """Hooks that note which component layer produced each tensor of the forward run inside;
    yields a function from that forward's output to the layers that produced it (the head).
    Lets a forward run for another reason (``capture.check_runs``) find the head too."""
    # (tensor, path) kept alive: a freed activation's id could be reused by a later tensor
    produced: dict[int, tuple] = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o, p=p: produced.__setitem__(id(o), (o, p)))
        for p, m in groups(model).items()
    ]

    def found(out) -> list[str]:
        return [
            produced[id(o)][1]
            for o in tensors(out)
            if id(o) in produced and produced[id(o)][0] is o
        ]

    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def output_layers(model: nn.Module, example) -> list[str]:
    """Paths of the component layers whose output is the model's output (the classifier head):
    pruning their units would remove classes, so editors leave them alone."""
    with heads_recorder(model) as found_in, torch.no_grad(), eval_mode(model):
        out = call(model, example)
    return found_in(out) or _heads_through_free_ops(model, example)


def _heads_through_free_ops(model: nn.Module, example) -> list[str]:
    """The component layers whose output reaches the model's primary output through operations
    without components only (pooling, activation, flatten, softmax: a conv followed by global
    pooling, as SqueezeNet's classifier) and whose width is the output's (its dimension 1 or
    last): found by walking the autograd graph of one forward back from the output, stopping at
    every component's output. [] if the output has no graph."""
    made: dict = {}

    def hook(path: str):
        def record(mod, inputs, o):
            if torch.is_tensor(o) and o.grad_fn is not None:
                made.setdefault(o.grad_fn, path)

        return record

    handles = [m.register_forward_hook(hook(p)) for p, m in groups(model).items()]
    try:
        with torch.enable_grad(), eval_mode(model):
            leaf = (
                example.detach().clone().requires_grad_()
                if torch.is_tensor(example) and example.is_floating_point()
                else example
            )
            out = primary(call(model, leaf))
    except RuntimeError:
        return []
    finally:
        for h in handles:
            h.remove()
    found, stack, seen = [], [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            found.append(made[fn])
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions)
    mods = groups(model)
    widths = {out.shape[1], out.shape[-1]} if out.ndim >= 2 else set()
    return [p for p in dict.fromkeys(found) if size_of(mods[p]) in widths]


def bn_of(model: nn.Module) -> dict[str, str]:
    """conv path -> path of the BatchNorm2d that directly consumes its output (traced with
    torch.fx; falls back to definition order for models fx cannot trace)."""
    try:
        gm = torch.fx.symbolic_trace(model)
        mods = dict(model.named_modules())
        pairs = {}
        for node in gm.graph.nodes:
            if node.op == "call_module" and isinstance(mods.get(node.target), nn.Conv2d):
                users = list(node.users)
                if (
                    len(users) == 1
                    and users[0].op == "call_module"
                    and isinstance(mods.get(users[0].target), nn.BatchNorm2d)
                ):
                    pairs[node.target] = users[0].target
        return pairs
    except Exception:
        pairs, last = {}, None
        for path, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                last = (path, m.out_channels)
            elif isinstance(m, nn.BatchNorm2d) and last and last[1] == m.num_features:
                pairs[last[0]] = path
                last = None
        return pairs
