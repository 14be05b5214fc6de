"""Keys and values of a layer viewed as a linear associative memory v = W k (ALGORITHMS.md 6.1):
for a Linear the keys are its input rows; for a Conv2d the unfolded input patch at every output
pixel (in weight order c, kh, kw), so W is the weight flattened to [c_out, c_in * kh * kw]. The
values are the layer's outputs without the bias, at the same rows / pixels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.components import get_module
from ..core.errors import InputError
from ..core.outputs import output


def flat_weight(module: nn.Module) -> torch.Tensor:
    if not isinstance(module, (nn.Conv2d, nn.Linear)) or (isinstance(module, nn.Conv2d) and module.groups != 1):
        raise InputError(f"key/value editing needs a Linear or groups=1 Conv2d, got {type(module).__name__}")
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
