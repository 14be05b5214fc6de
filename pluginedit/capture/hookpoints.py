"""Where to observe a component layer's channels: its own output ("conv"), the BatchNorm after it
("bn"), the activation after that ("act"), or the LayerNorm after it ("ln") — ALGORITHMS.md §9.5.

``resolve(model, layer, point)`` follows the traced graph from the layer through single-user
call_module nodes and returns (module path, "output"). A module called more than once in the
forward (e.g. a ResNet block's shared ReLU) is refused: its hook would mix two tensors.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..core.components import get_module, kind_of
from ..core.errors import InputError

POINTS = ("conv", "bn", "act", "ln")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_ACTS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU)
_WANT = {"bn": _NORMS, "ln": (nn.LayerNorm,), "act": _ACTS}


# model -> (structure signature, {layer: chain}): one trace per model, not one per layer (a
# scorer resolves every target; tracing ResNet-50 53 times cost more than its statistics)
_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple:
    return tuple((name, type(m)) for name, m in model.named_modules())


def _all_chains(model: nn.Module) -> dict[str, list]:
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:
        raise InputError(
            f"cannot trace the model to find hook points ({type(e).__name__}); use hook='conv'"
        ) from e
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    chains: dict[str, list] = {}
    for start in gm.graph.nodes:
        if start.op != "call_module" or start.target in chains:
            continue
        node, chain = start, []
        while len(node.users) == 1:
            node = next(iter(node.users))
            if node.op != "call_module":
                break
            if calls[node.target] > 1:
                chain.append(None)  # shared module: unusable
                break
            chain.append(node.target)
        chains[start.target] = chain
    return chains


def _chain(model: nn.Module, layer: str) -> list[str]:
    """Module paths that consume ``layer``'s output one after another (single users only)."""
    sig = _signature(model)
    cached = _CHAINS.get(model)
    if cached is None or cached[0] != sig:
        cached = (sig, _all_chains(model))
        _CHAINS[model] = cached
    return cached[1].get(layer, [])


def resolve(model: nn.Module, layer: str, point: str = "conv") -> tuple[str, str]:
    """(module path, where) at which to hook ``layer``'s channels for ``point``."""
    if point not in POINTS:
        raise InputError(f"unknown hook point {point!r}; known: {POINTS}")
    # the layer itself, not groups(model): a scorer resolves every target, and a walk of all
    # modules per target cost ResNet-50 more than its statistics' arithmetic
    if kind_of(get_module(model, layer)) is None:  # get_module raises a KeyError if absent
        raise InputError(f"{layer!r} is not a conv/linear layer")
    if point == "conv":
        return layer, "output"
    # Modules a channel passes through unchanged in meaning on the way to the wanted one.
    through = (nn.Identity, nn.Dropout) + ((*_NORMS, nn.LayerNorm) if point == "act" else ())
    for path in _chain(model, layer):
        if path is not None and isinstance(model.get_submodule(path), _WANT[point]):
            return path, "output"
        if path is None or not isinstance(model.get_submodule(path), through):
            break
    raise InputError(
        f"no {point!r} hook point directly after {layer!r} (a residual add, a shared "
        f"module, or no such layer); use hook='bn' or hook='conv'"
    )


def resolve_auto(model: nn.Module, layer: str, order=("act", "bn", "conv")) -> tuple[str, str]:
    """The first hook point of ``order`` that exists for ``layer``."""
    for point in order:
        try:
            return resolve(model, layer, point)
        except InputError:
            continue
    return layer, "output"
