"""Error-corrected (sequential) refit of a pruned CNN against its dense original.

delta* (``compensate.refit_from``) refits every consumer from statistics of the DENSE model's
inputs, but after removal each consumer reads inputs that upstream pruning has already changed
(in a ResNet: the residual stream and several pruned layers in sequence), so that refit aims at a
distribution the layer no longer sees. Here, after removal, each consumer in forward order is
refit on the inputs it now receives in the pruned model (its earlier consumers already refit):

    W' = argmin E || W_dense x_dense - W' x_pruned ||^2      (kept output rows only)

centred, with the ridge shrinking the change from the current weight, the output mean restored
through the bias (or the following BN's running mean: the dense one minus the mean the layer
still misses, so the next layers read inputs normalised as in the dense model). Cost: one
calibration pass per consumer of the pruned model and of the dense copy beside it, each stopped
at the layer refit (on average about half a forward each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...capture import batches
from ...core.components import eval_mode, get_module
from ...linalg import DEFAULT_MAX_COND, shrinkage_ridge, solve_spd
from ...scorers.fidelity import geometry
from .resume import Resumer, Stop

CHUNK = 64 << 20  # bytes of float64 patches formed at once
CACHE = 2 << 30  # bytes of cached activations (both models) that let passes start part-way


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies by its weight: [rows, in * kh * kw] (or [rows, in])."""
    if isinstance(module, nn.Conv2d):
        g = geometry(module)  # "same" / "valid" padding as the numbers it pads by
        cols = F.unfold(x, g["kernel_size"], g["dilation"], g["padding"], g["stride"])
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def _outputs(y: torch.Tensor, conv: bool) -> torch.Tensor:
    return (
        y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1]) if conv else y.reshape(-1, y.shape[-1])
    )


def refittable(module: nn.Module, budget: int) -> bool:
    """A plain Conv2d (no groups, zero padding a number can say) or Linear whose Gram fits
    ``budget`` bytes."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or geometry(module) is None:
            return False
    elif not isinstance(module, nn.Linear):
        return False
    d = module.weight[0].numel()
    return 8 * d * (d + module.weight.shape[0]) <= budget


class _Sums:
    """Running float64 sums of one layer: Gram and cross of its patches and dense outputs."""

    def __init__(self):
        self.g = self.c = self.ps = self.ys = None
        self.n = 0

    def add(self, layer, xs, y) -> None:
        # a few samples at a time: unfolded patches are kh * kw times the activation
        per = y.shape[0] // len(xs)  # rows (positions) per sample
        step = max(1, CHUNK // (8 * per * layer.weight[0].numel()))
        for i in range(0, len(xs), step):
            p = _patches(layer, xs[i : i + step]).double()
            yb = y[i * per : i * per + p.shape[0]]
            if self.g is None:
                self.g, self.c, self.ps, self.ys = p.T @ p, p.T @ yb, p.sum(0), yb.sum(0)
            else:
                self.g += p.T @ p
                self.c += p.T @ yb
                self.ps += p.sum(0)
                self.ys += yb.sum(0)
            self.n += p.shape[0]

    def moments(self):
        """(centred Gram, centred cross, input mean, output mean, rows), on the CPU."""
        n = self.n
        g, c, mu, my = self.g.cpu() / n, self.c.cpu() / n, self.ps.cpu() / n, self.ys.cpu() / n
        return g - mu[:, None] * mu[None, :], c - mu[:, None] * my[None, :], mu, my, n


@torch.no_grad()
def _moments(res: Resumer, path: str, rows) -> tuple:
    """``_Sums.moments`` of the pruned layer ``path``'s inputs against the dense layer's outputs
    (kept ``rows``), from one pass over the calibration batches, resumed where ``res`` caches
    and stopped at the layer in both models."""
    pruned, dense = res.models["pruned"], res.models["dense"]
    conv, acc, sums = isinstance(get_module(dense, path), nn.Conv2d), {}, _Sums()

    def take(_m, args):
        acc["x"] = args[0]
        raise Stop

    def target(_m, _args, out):
        acc["y"] = _outputs(out[:, rows] if conv else out[..., rows], conv)
        raise Stop

    hs = [
        get_module(pruned, path).register_forward_pre_hook(take),
        get_module(dense, path).register_forward_hook(target),
    ]
    try:
        for b in range(len(res.xs)):
            for key in ("pruned", "dense"):
                try:
                    res.run(key, b)
                except Stop:
                    pass
            sums.add(get_module(pruned, path), acc.pop("x"), acc.pop("y").double())
    finally:
        for h in hs:
            h.remove()
    return sums.moments()


@torch.no_grad()
def _refit(layer, bn, gram, cross, mu, my, n, ridge, max_cond) -> float:
    """Solve in place; the ridge (relative, at least the OAS shrinkage) shrinks the change."""
    w = layer.weight.data
    cur = w.reshape(w.shape[0], -1).double().cpu()
    rhs = cross - gram @ cur.T
    lam = max(float(ridge), float(shrinkage_ridge(gram, n)))
    delta, used = solve_spd(gram, rhs, lam, max_cond, "sequential refit")
    new = cur + delta.T
    w.copy_(new.reshape(w.shape).to(w))
    shift = my - new @ mu  # the output mean the layer must add to match the dense one
    if layer.bias is not None:
        layer.bias.data.copy_(shift.to(layer.bias))
    elif bn is not None:  # (bn, the dense BN's running mean of the kept rows)
        bn[0].running_mean.copy_((bn[1] - shift).to(bn[0].running_mean))
    return float(used.max())


def kept_rows(dense, pruned, removed: dict, budget: int) -> dict:
    """{path: kept output rows of the dense layer} for every consumer of a removed input that
    ``refittable`` accepts once pruned (``removed``: ``modhifi_cnn.Removals.removed``)."""
    out = {}
    for path in removed["in"]:
        if refittable(get_module(pruned, path), budget):
            gone = set(removed["out"].get(path, []))
            width = get_module(dense, path).weight.shape[0]
            out[path] = torch.tensor([r for r in range(width) if r not in gone], dtype=torch.long)
    return out


def forward_order(model, paths, x) -> list[str]:
    """``paths`` in the order the forward of the batch ``x`` reaches them."""
    seen: list[str] = []
    hs = [
        get_module(model, p).register_forward_pre_hook(lambda _m, _a, p=p: seen.append(p))
        for p in paths
    ]
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1])
    finally:
        for h in hs:
            h.remove()
    return [p for p in dict.fromkeys(seen) if p in set(paths)]


def sequential_refit(
    pruned, dense, rows, data, bns, opts, batch, max_cond=DEFAULT_MAX_COND, cache=None
):
    """Refit each layer of ``rows`` ({path: kept output rows of the dense layer}) of the pruned
    model against the dense copy ``dense``, in forward order, one stopped pass each (all from
    one pass, each layer seeing its inputs before the layers upstream were refit, measured worse:
    the corrections compound). Each pass starts at the chain link closest above the layer
    (``resume.Resumer``; up to ``cache`` bytes of cached inputs, default ``CACHE``), so the
    passes together cost a few forwards rather than one per layer. ``bns``: {path: BN path} of
    the BN after each layer (the same in both models).
    Returns {"ridges": [...], "passes": number of (stopped) calibration passes, "resumed": how
    many started part-way, "bns": the BN paths whose statistics were set (a later
    recalibration should leave them: it would rescale each refit output, a projection with less
    variance than its dense target, to unit variance, which measured worse)}."""
    ridges, set_bns, resumed = [], [], 0
    with eval_mode(pruned), eval_mode(dense), torch.no_grad():
        xs = [x for x, _ in batches(pruned, data, None, batch, opts.calib_samples)]
        order = forward_order(pruned, list(rows), xs[0])
        res = Resumer({"pruned": pruned, "dense": dense}, xs, CACHE if cache is None else cache)
        for path in order:
            res.move_to(path)
            resumed += res.at is not None
            got = _moments(res, path, rows[path])
            bn = _bn(pruned, dense, bns.get(path), rows[path], set_bns)
            ridges.append(_refit(get_module(pruned, path), bn, *got, opts.ridge, max_cond))
    return {"ridges": ridges, "passes": len(order), "resumed": resumed, "bns": set_bns}


def _bn(pruned, dense, path, rows, set_bns):
    """(the pruned BN at ``path``, the dense running mean of its kept rows), or None."""
    if path is None:
        return None
    set_bns.append(path)
    ref = get_module(dense, path).running_mean[rows]
    return get_module(pruned, path), ref.double().cpu()
