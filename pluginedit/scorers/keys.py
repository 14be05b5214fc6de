"""Keys and values of a layer viewed as a linear associative memory v = W k (ALGORITHMS.md 6.1):
for a Linear the keys are its input rows; for a Conv2d the unfolded input patch at every output
pixel (in weight order c, kh, kw), so W is the weight flattened to [c_out, c_in * kh * kw]. The
values are the layer's outputs without the bias, at the same rows / pixels.

``block_output`` reads the value of a non-linear block instead: the output of the first
activation module that runs after the layer (after BN, after a residual add), or of a named
module, optionally under a replaced (differentiable) layer weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..core.components import get_module
from ..core.errors import InputError
from ..core.outputs import output, primary


def flat_weight(module: nn.Module) -> torch.Tensor:
    if not isinstance(module, (nn.Conv2d, nn.Linear)) or (
        isinstance(module, nn.Conv2d) and module.groups != 1
    ):
        raise InputError(
            f"key/value editing needs a Linear or groups=1 Conv2d, got {type(module).__name__}"
        )
    return module.weight.detach().flatten(1)


def keys_of(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Keys [N, L, D] of the layer's input batch (L pixels; 1 row for a 2-D linear input)."""
    if isinstance(module, nn.Linear):
        return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
    if isinstance(module.padding, str):
        raise InputError("key/value editing needs numeric conv padding")
    cols = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
    return cols.transpose(1, 2)


@torch.no_grad()
def layer_keys(model: nn.Module, path: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys [N, L, D], values [N, L, O]) of layer ``path`` on the inputs ``x``."""
    module = get_module(model, path)
    w = flat_weight(module)
    seen = {}

    def hook(m, inputs, out):
        seen["k"] = keys_of(m, inputs[0])

    handle = module.register_forward_hook(hook)
    try:
        output(model, x)
    finally:
        handle.remove()
    if "k" not in seen:
        raise InputError(f"layer {path!r} did not run in the forward pass")
    k = seen["k"]
    return k, k @ w.T.to(k.dtype)


ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Tanh,
    nn.Sigmoid,
)


class _Stop(Exception):
    """Raised by a hook once the block output is read: nothing after it needs to run."""


def _block_hooks(model, path: str, value_path: str | None, state: dict) -> list:
    candidates = (
        {value_path: get_module(model, value_path)}
        if value_path
        else {p: m for p, m in model.named_modules() if isinstance(m, ACTIVATIONS)}
    )

    def after_layer(m, inputs, out):
        state["ran"] = True

    def reader(p):
        def hook(m, inputs, out):
            if state.get("ran"):  # the first call after the layer (a shared ReLU runs twice)
                state["out"], state["path"] = out, p
                raise _Stop

        return hook

    return [get_module(model, path).register_forward_hook(after_layer)] + [
        m.register_forward_hook(reader(p)) for p, m in candidates.items()
    ]


def block_output(
    model: nn.Module,
    path: str,
    x: torch.Tensor,
    value_path: str | None = None,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, str]:
    """(output, its module path) of ``value_path``, or of the first activation module, on its
    first call after layer ``path`` ran on ``x``; the forward stops there. ``weight`` replaces the
    layer's weight for this call (gradients flow to it)."""
    state: dict = {}
    handles = _block_hooks(model, path, value_path, state)
    try:
        if weight is None:
            output(model, x)
        else:
            functional_call(model, {f"{path}.weight": weight}, (x,))
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if "out" not in state:
        where = repr(value_path) if value_path else "no activation module"
        raise InputError(
            f"{where} runs after layer {path!r}; name the block output with value_module"
        )
    return primary(state["out"]), state["path"]
