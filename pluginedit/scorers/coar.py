"""COAR component attributions (ALGORITHMS.md 5): regress each example's correct-class margin on
random ablation masks over every conv filter / linear row, jointly for all examples.

``estimate`` runs the batched masked forwards (``capture.masks``), folds them into
``AblationSums`` and solves by least squares (``ols``) or by the difference of means (``diffmeans``,
no C x C system). ``lds`` evaluates attributions on fresh masks: per example, the Pearson
correlation between predicted and actual margins. The ``coar`` scorer turns attributions into
per-component importance for pruning (mean |w| over the calibration examples, or the signed mean).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..capture import as_loader, model_device
from ..capture.masks import component_slices, keep_masks, margins, masked_outputs
from ..core.errors import InputError
from ..core.plugin import Scorer, option
from ..core.outputs import take
from ..stats.ablation import AblationSums


def _examples(data, n: int):
    xs, ys, seen = [], [], 0
    for x, y in as_loader(data, batch_size=max(1, n)):
        xs.append(x)
        ys.append(y)
        seen += len(y)
        if seen >= n:
            break
    return take(torch.cat(xs), slice(0, n)), torch.cat(ys)[:n]


def _margins_under(model, x, y, slices, masks, chunk: int) -> torch.Tensor:
    """[M, N] margins for every mask, ``chunk`` masks per forward pass."""
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)
    return torch.cat([margins(masked_outputs(model, x, slices, masks[i:i + chunk]), y).float().cpu()
                      for i in range(0, masks.shape[0], chunk)])


@torch.no_grad()
def estimate(model, x, y, paths: list[str], n_masks: int = 1000, alpha: float = 0.05, seed: int = 0,
             estimator: str = "ols", ridge: float = 0.0, chunk: int = 16):
    """Attributions (W [C, N], b [N], slices) of the ``N`` examples ``(x, y)`` over the components
    of ``paths``; w_c > 0: keeping component c raises the example's margin."""
    was = model.training
    model.eval()
    try:
        slices = component_slices(model, paths)
        c = sum(w for _, _, w in slices)
        sums = AblationSums(c, len(y), gram=estimator == "ols")
        for start in range(0, n_masks, 256):
            masks = keep_masks(seed, start, min(256, n_masks - start), c, alpha)
            sums.update(masks, _margins_under(model, x, y, slices, masks, chunk))
    finally:
        model.train(was)
    if estimator == "ols":
        w, b = sums.least_squares(ridge)
    elif estimator == "diffmeans":
        w, b = sums.difference_of_means()
    else:
        raise InputError(f"unknown COAR estimator {estimator!r}; known: ols, diffmeans")
    return w.float(), b.float(), slices


@torch.no_grad()
def lds(model, x, y, slices, w: torch.Tensor, b: torch.Tensor, n_masks: int = 200,
        alpha: float = 0.05, seed: int = 10_000, chunk: int = 16) -> torch.Tensor:
    """Per example, the Pearson correlation [N] between predicted (b + w.x) and actual margins on
    ``n_masks`` fresh masks (mask indices disjoint from estimation's when ``seed`` differs)."""
    c = w.shape[0]
    masks = keep_masks(seed, 0, n_masks, c, alpha)
    model.eval()
    actual = _margins_under(model, x, y, slices, masks, chunk)               # [M, N]
    predicted = masks.float() @ w + b                                        # [M, N]
    a, p = actual - actual.mean(0), predicted - predicted.mean(0)
    return (a * p).sum(0) / (a.norm(dim=0) * p.norm(dim=0)).clamp_min(1e-12)


@dataclass(frozen=True)
class CoarOptions:
    masks: int = option(1000, "random ablation masks")
    alpha: float = option(0.05, "fraction of components ablated per mask")
    examples: int = option(256, "calibration examples attributed")
    estimator: Literal["ols", "diffmeans"] = option("ols", "least squares, or difference of means")
    reduce: Literal["abs", "signed"] = option("abs", "importance = mean |w| or mean w over examples")
    seed: int = option(0, "mask seed (masks regenerate from (seed, index))")
    chunk: int = option(16, "masks per forward pass")

    def __post_init__(self):
        if self.masks < 2 or self.examples < 1 or self.chunk < 1 or not 0 < self.alpha < 1:
            raise InputError("COAR needs masks >= 2, examples >= 1, chunk >= 1 and alpha in (0, 1)")


class CoarScorer(Scorer):
    """Component importance from COAR attributions of the calibration examples."""
    name = "coar"
    needs_data = True
    needs_labels = True
    own_loop = True
    Options = CoarOptions

    def score(self, model, stats, inputs):
        o = self.options
        x, y = _examples(inputs.data, o.examples)
        w, b, slices = estimate(model, x, y, list(inputs.targets), o.masks, o.alpha, o.seed, o.estimator,
                                chunk=o.chunk)
        imp = w.abs().mean(1) if o.reduce == "abs" else w.mean(1)
        return {p: imp[s:s + n] for p, s, n in slices}
