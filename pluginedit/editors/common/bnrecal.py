"""BatchNorm recalibration: re-estimate every BN's running mean and variance on calibration data
after an edit (ModHiFi-P's last step; it also absorbs the mean of removed contributions)."""

from __future__ import annotations

import torch
from torch import nn

from ...capture import batches
from ...core.components import eval_mode
from ...core.errors import InputError

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, data, max_samples: int = 2048, batch_size: int = 256, skip=()
) -> int:
    """Reset and re-estimate the running statistics of every BatchNorm with an exact cumulative
    average (momentum None) over up to ``max_samples`` unlabelled inputs; everything else stays in
    eval mode (no dropout), and every module gets its own training flag back afterwards. Returns
    the number of BN layers recalibrated. BN modules in ``skip`` keep their statistics."""
    skip = {id(m) for m in skip}
    bns = [
        m
        for m in model.modules()
        if isinstance(m, _BN) and m.track_running_stats and id(m) not in skip
    ]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    saved = [{k: v.clone() for k, v in m.named_buffers()} for m in bns]
    seen = 0
    with eval_mode(model):
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for x, _ in batches(model, data, None, batch_size, max_samples):
                model(x)
                seen += x.shape[0]
            if seen == 0:
                for m, state in zip(bns, saved):
                    for k, v in state.items():
                        getattr(m, k).copy_(v)
                raise InputError("BN recalibration got no calibration samples")
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
    return len(bns)
