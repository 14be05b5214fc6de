"""ModHiFi compensation delta*: refit the kept inputs of a layer so its outputs change as little
as possible (in expectation over the calibration data) when the other inputs are removed.

* Linear layers: the exact least-squares refit  W'_C = W_C + (G_CC + lam I)^-1 G_CC- W_C-
  (the ridge shrinks the *change*, so keeping everything changes nothing).
* Convs: one scalar per kept kernel slice, delta_c = 1 + (Q_c[C,C] + lam I)^-1 Q_c[C,C-] 1,
  Q_c[i, j] = w_ci^T Sigma_ij w_cj (ALGORITHMS.md 4.3), one small solve per output channel.

Centred statistics leave a shift of the output mean, which is folded into the bias (or the
following BN's running mean), so the refit is the best affine one.

Solves add a ridge ``ridge * mean(diag)``; when the Gram is ill-conditioned (dead, duplicated or
under-sampled channels) the ridge grows until the regularised condition number is at most
``max_cond`` and an ``IllConditionedWarning`` says so. No solve ever returns NaN."""

from __future__ import annotations

import torch
from torch import nn

from ...core.errors import InputError
from ...linalg import DEFAULT_MAX_COND, DEFAULT_RIDGE, shrinkage_ridge, solve_spd
from ...stats.layer_io import KeptStats


def _keep_mask(keep, n: int) -> torch.Tensor:
    keep = torch.as_tensor(keep)
    if keep.dtype != torch.bool:
        if keep.numel() and (keep.min() < 0 or keep.max() >= n):
            raise InputError(f"kept indices out of range [0, {n - 1}]")
        keep = torch.zeros(n, dtype=torch.bool).index_fill_(0, keep.long(), True)
    if keep.shape != (n,):
        raise InputError(f"keep mask must have {n} entries, got {tuple(keep.shape)}")
    if not keep.any():
        raise InputError("compensation needs at least one kept input")
    return keep


def refit_linear(
    weight: torch.Tensor,
    gram: torch.Tensor,
    keep,
    ridge: float = DEFAULT_RIDGE,
    max_cond: float = DEFAULT_MAX_COND,
    mean: torch.Tensor | None = None,
):
    """delta* for a Linear weight [out, in] given the input Gram [in, in] (second moment, or the
    covariance together with the input ``mean``). Returns (new weight with removed columns zeroed,
    bias shift [out] that restores the output mean (zeros without ``mean``), ridge used)."""
    w = weight.detach().double()
    keep = _keep_mask(keep, w.shape[1])
    drop = ~keep
    g = gram.double()
    new = torch.zeros_like(w)
    new[:, keep] = w[:, keep]
    lam = torch.zeros(())
    if drop.any():
        rhs = g[keep][:, drop] @ w[:, drop].T  # [C, out]
        delta, lam = solve_spd(g[keep][:, keep], rhs, ridge, max_cond, "linear compensation")
        new[:, keep] += delta.T
    shift = torch.zeros(w.shape[0], dtype=torch.float64)
    if mean is not None:
        shift = (w - new) @ mean.double()
    return new.to(weight.dtype), shift.to(weight.dtype), float(lam)


def slice_q(weight: torch.Tensor, sigma: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Q_c[i, j] = w_ci^T Sigma_ij w_cj for every output channel: [out, in, in] (float64)."""
    co, ci = weight.shape[:2]
    w = weight.detach().double().reshape(co, ci, -1)
    s = sigma.double().reshape(ci, w.shape[2], ci, w.shape[2])
    out = []
    for part in w.split(chunk):
        t = torch.einsum("iajb,cjb->ciaj", s, part)
        out.append(torch.einsum("cia,ciaj->cij", part, t))
    return torch.cat(out)


def refit_conv(
    weight: torch.Tensor,
    sigma: torch.Tensor,
    keep,
    ridge: float = DEFAULT_RIDGE,
    max_cond: float = DEFAULT_MAX_COND,
    mean: torch.Tensor | None = None,
):
    """Per-slice rescaling delta* for a Conv2d weight [out, in, kh, kw] given the patch Gram
    Sigma [in*kh*kw, in*kh*kw]. Returns (new weight, output-mean shift [out], max ridge used)."""
    w = weight.detach().double()
    co, ci = w.shape[:2]
    keep = _keep_mask(keep, ci)
    drop = ~keep
    scale = keep.double().expand(co, ci).clone()
    lam = torch.zeros(())
    if drop.any():
        q = slice_q(w, sigma)
        rhs = q[:, keep][:, :, drop].sum(-1, keepdim=True)  # [out, C, 1]
        delta, lam = solve_spd(q[:, keep][:, :, keep], rhs, ridge, max_cond, "conv compensation")
        scale[:, keep] += delta[..., 0]
    new = w * scale[:, :, None, None]
    shift = torch.zeros(co, dtype=torch.float64)
    if mean is not None:
        shift = (w - new).reshape(co, -1) @ mean.double()
    return new.to(weight.dtype), shift.to(weight.dtype), float(lam.max())


def refit_conv_full(weight, sigma, keep, ridge=DEFAULT_RIDGE, max_cond=DEFAULT_MAX_COND, mean=None):
    """The exact least-squares refit of a conv seen as a linear map of its unfolded patches:
    every weight of the kept slices may change (a superset of the per-slice rescaling)."""
    co, ci, kh, kw = weight.shape
    keep = _keep_mask(keep, ci).repeat_interleave(kh * kw)
    new, shift, lam = refit_linear(weight.reshape(co, -1), sigma, keep, ridge, max_cond, mean)
    return new.reshape(weight.shape), shift, lam


@torch.no_grad()
def compensate(
    module: nn.Module,
    gram,
    keep,
    bn: nn.BatchNorm2d | None = None,
    ridge: float = DEFAULT_RIDGE,
    max_cond: float = DEFAULT_MAX_COND,
    centred: bool = True,
    conv: str = "slice",
) -> float:
    """Apply delta* in place to a Linear / Conv2d for the kept inputs ``keep`` using its input
    ``gram`` (a pluginedit.stats.Gram). Convs use the per-slice rescaling (``conv="slice"``, the
    paper's delta*) or the full least-squares refit of the kept slices (``conv="full"``). With
    ``centred`` the output-mean shift goes into the bias, else into ``bn``'s running mean; with
    neither, the uncentred refit is used. The removed input slices are zeroed (physically
    removing them afterwards changes nothing). Returns the ridge."""
    centred = centred and (getattr(module, "bias", None) is not None or bn is not None)
    sigma = gram.matrix(centred)
    mean = gram.mean if centred else None
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise InputError(f"compensation needs a Linear or Conv2d, got {type(module).__name__}")
    if isinstance(module, nn.Conv2d) and conv == "full":
        new, shift, lam = refit_conv_full(module.weight, sigma, keep, ridge, max_cond, mean)
    elif isinstance(module, nn.Conv2d):
        new, shift, lam = refit_conv(module.weight, sigma, keep, ridge, max_cond, mean)
    else:
        new, shift, lam = refit_linear(module.weight, sigma, keep, ridge, max_cond, mean)
    module.weight.copy_(new)
    if module.bias is not None:
        module.bias.add_(shift)
    elif bn is not None:
        bn.running_mean.sub_(shift)  # BN input lost ``shift`` on average: move the mean with it
    return lam


@torch.no_grad()
def refit_from(
    module: nn.Module,
    st: KeptStats,
    bn: nn.BatchNorm2d | None = None,
    ridge: float = DEFAULT_RIDGE,
    max_cond: float = DEFAULT_MAX_COND,
    centred: bool = True,
    conv: str = "full",
    shrink: bool = True,
) -> float:
    """delta* in place from ``KeptStats`` collected on the layer (the dense one: its removed
    inputs still present): the kept inputs ``st.keep`` of the kept outputs ``st.rows`` are refit
    and every removed input is zeroed. ``exact``: the least-squares refit of the kept input rows,
    as ``refit_linear`` / ``refit_conv_full`` on the kept block of the Gram (one solve per group
    of a grouped conv); ``position``: per position s (kernel offset, or position of a flattened
    channel) the kept channels at s refit the removed ones at s: cross-position correlations are
    not used, a restricted refit for layers whose kept Gram exceeds the memory budget. A conv
    with ``conv="slice"`` gets the paper's per-slice rescaling instead of the full refit (its
    Q_c[C, removed] 1 = w_ci . E[p_i z_c] with z the removed part of the output). The output
    mean shift goes into the bias or ``bn``'s running mean as in ``compensate``. With ``shrink``
    the relative ridge is at least the OAS shrinkage of the kept Gram (``shrinkage_ridge``): a
    Gram of about as many dimensions as rows (a Linear after a flatten on a small calibration
    set) is not inverted raw. Returns the largest ridge used."""
    centred = centred and (getattr(module, "bias", None) is not None or bn is not None)
    gram, cross, mu, my = _moments(st, centred)
    w = module.weight.data = module.weight.data.contiguous()
    size = w[0, 0].numel() if isinstance(module, nn.Conv2d) else st.size
    w3 = w.view(w.shape[0], -1, size)  # [out, inputs per group, S], edited in place
    keep, rows = st.keep.to(w.device), st.rows.to(w.device)
    if shrink:  # few rows for the dimension: shrink more
        ridge = torch.clamp(shrinkage_ridge(gram, st.n()), min=ridge)
    else:
        ridge = torch.full(gram.shape[:-2], float(ridge), dtype=gram.dtype)
    if st.mode == "position":
        delta, lam = solve_spd(gram, cross, ridge, max_cond, "position compensation")
        sub = w3[rows][:, keep].cpu().double() + delta.permute(2, 1, 0)
        w3[rows[:, None], keep[None, :]] = sub.to(w.device, w.dtype)
        shift = (my - torch.einsum("skr,sk->sr", delta, mu)).sum(0)
    else:
        slices = conv == "slice" and isinstance(module, nn.Conv2d)
        lam, shift = _refit_exact(w3, st, gram, cross, mu, my, slices, ridge, max_cond)
    _zero_removed(w3, keep, st.groups)
    if centred:
        shift = shift.to(w.device, w.dtype)
        if module.bias is not None:
            module.bias[rows] += shift
        else:
            bn.running_mean[rows] -= shift
    return float(lam.max())


def _moments(st: KeptStats, centred: bool):
    """(Gram, cross, input mean, output mean) of ``st``: centred, or raw second moments."""
    n = st.n()
    gram, cross = st.gram.cpu() / n, st.cross.cpu() / n
    mu, my = st.psum.cpu() / n, st.ysum.cpu() / n
    if centred:
        gram = gram - mu[..., :, None] * mu[..., None, :]
        cross = cross - mu[..., :, None] * my[..., None, :]
    return gram, cross, mu, my


def _refit_exact(w3, st, gram, cross, mu, my, slices, ridge, max_cond):
    """The exact refit of each group's kept rows and inputs, in place on ``w3`` [out, in, S].
    Returns (ridges, output mean shift [R])."""
    groups, size = st.groups, w3.shape[2]
    kg = st.keep.view(groups, -1).to(w3.device) % w3.shape[1]  # kept inputs of each group
    rg = st.rows.view(groups, -1).to(w3.device)
    cur = torch.stack(
        [w3[rg[j]][:, kg[j]].reshape(len(rg[j]), -1).cpu().double() for j in range(groups)]
    )
    rhs = cross - gram @ cur.transpose(1, 2)  # Cov(p_K, removed part of y)
    if slices:
        new, lam = _slice_refit(cur, gram, rhs, size, ridge, max_cond)
    else:
        delta, lam = solve_spd(gram, rhs, ridge, max_cond, "compensation")
        new = cur + delta.transpose(1, 2)  # [groups, Rg, Dk]
    for j in range(groups):
        w3[rg[j][:, None], kg[j][None, :]] = new[j].reshape(len(rg[j]), -1, size).to(w3)
    return lam, (my - (new @ mu[..., None])[..., 0]).reshape(-1)


def _zero_removed(w3: torch.Tensor, keep: torch.Tensor, groups: int) -> None:
    """Zero the removed inputs of ``w3`` [out, in per group, S] (removing them then changes
    nothing); ``keep`` holds the kept inputs, numbered across groups."""
    per_in, per_out = w3.shape[1], w3.shape[0] // groups
    drop = torch.ones(per_in * groups, dtype=torch.bool, device=w3.device)
    drop[keep] = False
    dropped = drop.nonzero().squeeze(1)
    for j in range(groups):
        w3[j * per_out : (j + 1) * per_out, dropped[dropped // per_in == j] % per_in] = 0


def _slice_refit(cur, gram, rhs, size, ridge, max_cond):
    """Per-slice scales 1 + Q_c[C,C]^-1 Q_c[C,removed] 1 for each group's kept slices ``cur``
    [groups, R, Ck * S] from the kept Gram [groups, Dk, Dk] and ``rhs`` = Cov(p_K, z)
    [groups, Dk, R]."""
    out, lams = [], []
    for w, g, b, r in zip(cur, gram, rhs, ridge.expand(len(cur))):
        w3 = w.reshape(w.shape[0], -1, size)  # [R, Ck, S]
        q = slice_q(w3, g)  # [R, Ck, Ck]
        t = (w3 * b.T.reshape(w3.shape)).sum(-1)  # [R, Ck]: w_ci . E[p_i z_c]
        d, lam = solve_spd(q, t[..., None], float(r), max_cond, "conv compensation")
        out.append((w3 * (1 + d)).reshape(w.shape))
        lams.append(lam.max())
    return torch.stack(out), torch.stack(lams)
