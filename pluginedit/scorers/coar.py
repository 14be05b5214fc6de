"""COAR component attributions (ALGORITHMS.md 5): regress each example's correct-class margin on
random ablation masks over every conv filter / linear row, jointly for all examples.

``estimate`` runs the batched masked forwards (``scorers.masks``), folds them into
``AblationSums`` and solves by least squares (``ols``) or by the difference of means (``diffmeans``,
no C x C system). ``lds`` evaluates attributions on fresh masks: per example, the Pearson
correlation between predicted and actual margins. The ``coar`` scorer turns attributions into
per-component importance for pruning (mean |w| over the calibration examples, or the signed mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..capture import batches, model_device
from ..core.batches import batch_to, cat_batches
from ..core.components import eval_mode
from ..core.errors import InputError
from ..core.plugin import COUNT, NONNEGATIVE, RATIO, SEED, Scorer, option
from ..core.progress import bar
from ..stats.ablation import AblationSums
from ..stats.distributed import is_main, world
from .masks import component_slices, keep_gradients, keep_masks, margins, masked_outputs


def labelled(
    model, data, num_classes: int | None, n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (all when None) examples of labelled ``data`` as (x, y) tensors on the
    model's device, read through ``capture.batches`` (finite inputs, labels in range)."""
    xs, ys = [], []
    for x, y in batches(
        model,
        data,
        num_classes,
        batch_size=512 if n is None else max(1, min(n, 512)),
        max_samples=n,
    ):
        xs.append(x)
        ys.append(y)
    if not ys:
        raise InputError("COAR needs labelled data; got none")
    return cat_batches(xs), torch.cat(ys)


def masked_margins(model, x, y, slices, masks, chunk: int) -> torch.Tensor:
    """[M, N] margins for every mask, ``chunk`` masks per forward pass."""
    dev = model_device(model)
    x, y = batch_to(x, dev), y.to(dev)
    return torch.cat(
        [
            margins(masked_outputs(model, x, slices, masks[i : i + chunk]), y).float().cpu()
            for i in range(0, masks.shape[0], chunk)
        ]
    )


def gradient_prior(model, x, y, slices, points: int, alpha: float, seed: int) -> torch.Tensor:
    """The linearised model's attributions [C, N]: per example, d margin / d keep averaged over
    ``points`` random keep masks of the same design (at all ones when ``points`` is 0)."""
    c, n = sum(w for _, _, w in slices), len(y)
    dev = model_device(model)
    x, y = batch_to(x, dev), y.to(dev)
    if points == 0:
        return keep_gradients(model, x, y, slices, torch.ones(n, c)).T.cpu().double()
    total, comm = torch.zeros(n, c, dtype=torch.float64), world()
    for p in bar(range(points), desc="COAR prior"):  # stream disjoint from estimation's
        if comm is None or comm.mine(p):  # points shared out over the ranks
            keep = keep_masks(seed + 7_919, p * n, n, c, alpha)
            total += keep_gradients(model, x, y, slices, keep).cpu().double()
    total = comm.sum({"t": total})["t"] if comm is not None else total
    return (total / points).T


def chord_prior(model, x, y, slices, points: int, alpha: float, seed: int) -> torch.Tensor:
    """Sampled chords [C, N]: w_c = E_background[y(k_c = 1) - y(k_c = 0)] = E[integral over
    k_c in [0, 1] of d y / d k_c], estimated from gradients. Each pass probes one group of a
    fresh random partition of the components into G = round(1 / (2 alpha)) groups: probes sit at
    k = (s + U) / 2, s a fair bit (a stratified uniform point of the ablation path), the other
    components at a Bernoulli background thinned so the expected ablated mass stays alpha. One
    backward thus samples C / G chords at once (a mask samples one output), which is why this
    needs several times fewer model evaluations than regression for the same LDS."""
    c, n = sum(w for _, _, w in slices), len(y)
    if points < 1:
        raise InputError(f"the chord prior needs points >= 1, got {points}")
    groups = max(2, min(c, round(1 / (2 * alpha))))
    thinned = max(0.0, (alpha - 0.5 / groups) / (1 - 1 / groups))
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 104_729)
    dev = model_device(model)
    x, y = batch_to(x, dev), y.to(dev)
    total = torch.zeros(n, c, dtype=torch.float64)
    count = torch.zeros(n, c, dtype=torch.float64)
    comm = world()
    for p in bar(range(points), desc="COAR prior"):  # every rank draws every point
        if p % groups == 0:  # a fresh partition per cycle: no fixed co-probed components
            group = torch.rand(n, c, generator=g).argsort(1).argsort(1) % groups
        probe = group == p % groups
        u = (torch.randint(0, 2, (n, c), generator=g) + torch.rand(n, c, generator=g)) / 2
        keep = torch.where(probe, u, (torch.rand(n, c, generator=g) >= thinned).float())
        if comm is None or comm.mine(p):
            total += keep_gradients(model, x, y, slices, keep).cpu().double() * probe
        count += probe
    total = comm.sum({"t": total})["t"] if comm is not None else total
    return (total / count.clamp_min(1)).T


PRIORS = {"grad": gradient_prior, "chord": chord_prior}


@dataclass
class Attributions:
    """w [C, N] (w_c > 0: keeping component c raises the example's margin), b [N], the
    component layout ``slices`` [(path, first, width)] and how they were estimated."""

    w: torch.Tensor
    b: torch.Tensor
    slices: list
    info: dict


ESTIMATORS = ("ols", "ridge", "diffmeans")


def _check(estimator: str, prior: str, n_masks: int, folds: int) -> None:
    if estimator not in ESTIMATORS:
        raise InputError(f"unknown COAR estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    if prior != "none" and prior not in PRIORS:
        raise InputError(f"unknown COAR prior {prior!r}; known: none, {', '.join(PRIORS)}")
    if n_masks == 0 and prior == "none":
        raise InputError("COAR with masks=0 needs a prior (chord or grad)")
    if 0 < n_masks < max(2, folds):
        raise InputError(
            f"COAR needs 0 masks (prior alone) or at least max(2, folds) = {max(2, folds)}, "
            f"got {n_masks}"
        )


def _resume(path, sums: AblationSums, meta: dict):
    """Partial sums (and the prior) from ``path`` when it holds a run of the same design."""
    if path is None or not Path(path).exists():
        return None
    with safe_open(str(path), "pt") as f:
        saved = f.metadata() or {}
        if {k: saved.get(k) for k in meta} != {k: str(v) for k, v in meta.items()}:
            raise InputError(f"{path} holds COAR sums of another design: {saved}, not {meta}")
        state = {k: f.get_tensor(k) for k in f.keys()}
    prior = state.pop("prior", None)
    sums.load_state_dict(state)
    return prior


def _checkpoint(path, sums: AblationSums, prior, meta: dict) -> None:
    if path is None:
        return
    tensors = dict(sums.state_dict()) | ({"prior": prior} if prior is not None else {})
    tmp = Path(str(path) + ".tmp")
    save_file(
        {k: v.contiguous().cpu() for k, v in tensors.items()},
        str(tmp),
        metadata={k: str(v) for k, v in meta.items()},
    )
    tmp.replace(path)  # atomic: a killed run resumes from the last complete block


def _block(
    model, x, y, slices, p, sums: AblationSums, n_masks, seed, alpha, chunk, block
) -> AblationSums:
    """The sums of the next ``block`` masks. Under torch.distributed the block's ``chunk``-mask
    forwards are shared out over the ranks (chunk j to rank j mod world size; masks regenerate
    from their index) and the block's sums all-reduced."""
    start, comm = sums.masks_seen, world()
    end = min(start + block, n_masks)
    part = AblationSums(sums.num_components, sums.num_examples, gram=sums.gram, folds=sums.folds)
    for j, first in enumerate(range(start, end, chunk)):
        if comm is None or comm.mine(j):
            masks = keep_masks(seed, first, min(chunk, end - first), sums.num_components, alpha)
            y_masked = masked_margins(model, x, y, slices, masks, chunk).double()
            part.update(masks, y_masked - masks.double() @ p, first=first)
    if comm is not None:
        part.all_reduce(comm)
    return part


@torch.no_grad()
def estimate(
    model,
    x,
    y,
    paths: list[str],
    n_masks: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    estimator: str = "ridge",
    prior: str = "chord",
    prior_points: int = 80,
    ridge: float | None = None,
    folds: int = 5,
    chunk: int = 16,
    block: int = 256,
    resume=None,
) -> Attributions:
    """COAR attributions of the ``N`` examples ``(x, y)`` over the components of ``paths``.

    A prior p [C, N] comes first: ``chord`` (``chord_prior``, the fewer-evaluations estimator,
    ``prior_points`` backward passes), ``grad`` (mask gradients) or ``none``. Margins under
    ``n_masks`` regenerable keep masks are then folded into ``AblationSums`` as the residual
    y - x.p and solved by ``ols`` (p cancels), ``ridge`` towards p (``ridge=None``: chosen per
    example by ``folds``-fold cross-validation) or ``diffmeans`` (plus p: a control variate);
    ``n_masks=0`` returns the prior alone. With
    ``resume`` (a .safetensors path) partial sums are saved every ``block`` masks and a run
    with the same design continues from them. Under torch.distributed the prior's points and
    the masks are shared out over the ranks and their sums all-reduced; rank 0 saves."""
    _check(estimator, prior, n_masks, folds)
    with eval_mode(model):
        slices = component_slices(model, paths)
        c = sum(w for _, _, w in slices)
        gram = estimator != "diffmeans"
        sums = AblationSums(c, len(y), gram=gram, folds=folds if gram else 1)
        meta = _design(seed, alpha, c, len(y), prior, prior_points, gram, sums.folds)
        p = _resume(resume, sums, meta)
        if p is None:
            p = _prior(model, x, y, slices, prior, prior_points, alpha, seed)
        with bar(desc="COAR masks", total=n_masks) as shown:
            shown.update(sums.masks_seen)  # a resumed run starts where it stopped
            while sums.masks_seen < n_masks:
                seen = sums.masks_seen
                sums.merge(_block(model, x, y, slices, p, sums, n_masks, seed, alpha, chunk, block))
                shown.update(sums.masks_seen - seen)
                if is_main():
                    _checkpoint(resume, sums, p, meta)
    if sums.masks_seen == 0:
        w, b = torch.zeros_like(p), torch.zeros(len(y), dtype=torch.float64)
        info = {"estimator": "prior only"}
    else:
        w, b, info = solve(sums, estimator, ridge)
    info = {"estimator": estimator} | info | _cost(prior, prior_points, alpha, sums.masks_seen)
    return Attributions((w + p).float(), b.float(), slices, info)


def _design(seed, alpha, c, n, prior, prior_points, gram, folds) -> dict:
    """What a run saved for ``resume`` must share with this one to be continued."""
    return {
        "seed": seed,
        "alpha": alpha,
        "components": c,
        "examples": n,
        "prior": prior,
        "prior_points": prior_points,
        "gram": gram,
        "folds": folds,
    }


def _prior(model, x, y, slices, prior: str, points: int, alpha: float, seed: int) -> torch.Tensor:
    """The prior p [C, N] named by ``prior`` (zeros for ``none``)."""
    if prior == "none":
        c = sum(w for _, _, w in slices)
        return torch.zeros(c, len(y), dtype=torch.float64)
    return PRIORS[prior](model, x, y, slices, points, alpha, seed)


def _cost(prior: str, prior_points: int, alpha: float, masks: int) -> dict:
    """How the attributions were estimated, and at what cost in forward passes per example."""
    grad_passes = 0 if prior == "none" else max(prior_points, 1) * 3  # forward + backward: ~3
    return {
        "prior": prior,
        "masks": masks,
        "alpha": alpha,
        "forward_equivalents_per_example": masks + grad_passes,
    }


def solve(sums: AblationSums, estimator: str, ridge: float | None):
    if estimator == "diffmeans":
        w, b = sums.difference_of_means()
        return w, b, {}
    if estimator == "ols":
        w, b = sums.least_squares(0.0)
        return w, b, {}
    if ridge is not None:
        w, b = sums.least_squares(ridge)
        return w, b, {"ridge": float(ridge)}
    w, b, chosen = sums.cross_validated()
    return w, b, {"ridge_median": float(chosen.median())}


@torch.no_grad()
def lds(
    model,
    x,
    y,
    att: Attributions,
    n_masks: int = 200,
    alpha: float = 0.05,
    seed: int = 10_000,
    chunk: int = 16,
) -> torch.Tensor:
    """Per example, the Pearson correlation [N] between predicted (b + w.x) and actual margins on
    ``n_masks`` fresh masks (mask indices disjoint from estimation's when ``seed`` differs)."""
    masks = keep_masks(seed, 0, n_masks, att.w.shape[0], alpha)
    with eval_mode(model):
        actual = masked_margins(model, x, y, att.slices, masks, chunk)  # [M, N]
    return pearson(actual, masks.float() @ att.w + att.b)


def pearson(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Column-wise Pearson correlation of [M, N] tensors (0 where either is constant)."""
    a, p = a - a.mean(0), p - p.mean(0)
    return (a * p).sum(0) / (a.norm(dim=0) * p.norm(dim=0)).clamp_min(1e-12)


@torch.no_grad()
def leave_one_out(model, x, y, paths: list[str], chunk: int = 16) -> Attributions:
    """Baseline: w_c = margin with everything kept - margin with only c ablated (C + 1 passes)."""
    slices = component_slices(model, paths)
    c = sum(w for _, _, w in slices)
    with eval_mode(model):
        full = masked_margins(model, x, y, slices, torch.ones(1, c, dtype=torch.bool), 1)[0]
        single = masked_margins(model, x, y, slices, ~torch.eye(c, dtype=torch.bool), chunk)
    return Attributions(
        full - single,
        torch.zeros_like(full),
        slices,
        {"estimator": "loo", "forward_equivalents_per_example": c + 1},
    )


def gradient_times_parameter(model, x, y, paths: list[str]) -> Attributions:
    """Baseline: d margin / d keep at the full model, i.e. sum over each weight slice of
    gradient x parameter (one backward)."""
    slices = component_slices(model, paths)
    with eval_mode(model):
        g = gradient_prior(model, x, y, slices, 0, 0.0, 0).float()
    return Attributions(
        g,
        torch.zeros(len(y)),
        slices,
        {"estimator": "grad_x_param", "forward_equivalents_per_example": 3},
    )


@dataclass(frozen=True)
class CoarOptions:
    masks: int = option(200, "random ablation masks (0: the chord prior alone)", **NONNEGATIVE)
    alpha: float = option(0.05, "fraction of components ablated per mask", **RATIO)
    examples: int = option(64, "calibration examples attributed", **COUNT)
    estimator: Literal["ols", "ridge", "diffmeans"] = option(
        "ridge", "least squares, ridge towards the prior (cross-validated), or difference of means"
    )
    prior: Literal["none", "grad", "chord"] = option(
        "chord",
        "ridge prior / control variate: none, mask gradients, or sampled chords "
        "(fewer evaluations)",
    )
    prior_points: int = option(40, "backward passes of the prior", **NONNEGATIVE)
    reduce: Literal["abs", "signed"] = option(
        "abs", "importance = mean |w| or mean w over examples"
    )
    seed: int = option(0, "mask seed (masks regenerate from (seed, index))", **SEED)
    chunk: int = option(16, "masks per forward pass", **COUNT)
    resume: str | None = option(
        None, ".safetensors file of partial sums to save to and resume from"
    )


class CoarScorer(Scorer):
    """Component importance from COAR attributions of the calibration examples."""

    name = "coar"
    needs_data = True
    needs_labels = True
    own_loop = True
    Options = CoarOptions

    def score(self, model, stats, inputs):
        opts = self.options
        x, y = labelled(model, inputs.data, inputs.num_classes, opts.examples)
        att = estimate(
            model,
            x,
            y,
            list(inputs.targets),
            opts.masks,
            opts.alpha,
            opts.seed,
            opts.estimator,
            opts.prior,
            opts.prior_points,
            chunk=opts.chunk,
            resume=opts.resume,
        )
        imp = att.w.abs().mean(1) if opts.reduce == "abs" else att.w.mean(1)
        return {p: imp[s : s + n] for p, s, n in att.slices}, {"coar": att.info}
