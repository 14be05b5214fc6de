"""Ridge-regularised symmetric solves shared by the TV bounds and the compensation refits.

A ridge ``ridge * mean(diag)`` is added; when the matrix is ill-conditioned (dead, duplicated or
under-sampled channels) it grows until the regularised condition number is at most ``max_cond``
and an ``IllConditionedWarning`` says so. No solve ever returns NaN."""

from __future__ import annotations

import warnings

import torch

from .core.errors import EditError, InputError

DEFAULT_RIDGE = 1e-4
DEFAULT_MAX_COND = 1e4


class IllConditionedWarning(RuntimeWarning):
    """The Gram was ill-conditioned and the ridge had to grow."""


def ridge_for(a: torch.Tensor, ridge: float = DEFAULT_RIDGE, max_cond: float = DEFAULT_MAX_COND):
    """Ridge per matrix of the batch ``a`` [..., n, n]: ``ridge`` times the mean diagonal, grown
    where needed so that cond(a + lam I) <= max_cond. Returns (lam [...], grown [...] bool,
    cond [...])."""
    if ridge < 0 or max_cond <= 1:
        raise InputError(f"need ridge >= 0 and max_cond > 1, got {ridge}, {max_cond}")
    ev = torch.linalg.eigvalsh(a)
    lo, hi = ev[..., 0].clamp_min(0), ev[..., -1].clamp_min(0)
    scale = a.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(0)
    tiny = torch.finfo(a.dtype).tiny ** 0.5
    base = (ridge * scale).clamp_min(tiny)
    needed = (hi - max_cond * lo) / (max_cond - 1)  # solves (hi + l) / (lo + l) = max_cond
    lam = torch.maximum(base, needed)
    cond = (hi + base) / (lo + base)
    return lam, needed > base * (1 + 1e-9), cond


def solve_spd(
    a: torch.Tensor,
    b: torch.Tensor,
    ridge: float = DEFAULT_RIDGE,
    max_cond: float = DEFAULT_MAX_COND,
    what: str = "Gram",
):
    """Solve (a + lam I) x = b for symmetric PSD ``a`` [..., n, n] with one Cholesky per matrix.
    Returns (x, lam [...])."""
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InputError(f"{what}: NaN or Inf in the system to solve")
    a = (a + a.transpose(-1, -2)) / 2
    lam, grown, cond = ridge_for(a, ridge, max_cond)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(20):
        chol, info = torch.linalg.cholesky_ex(a + lam[..., None, None] * eye)
        if not bool((info != 0).any()):
            break
        grown = grown | (info != 0)
        lam = torch.where(info != 0, lam * 10, lam)  # rounding broke a near-singular pivot
    else:
        raise EditError(f"{what}: Cholesky failed even with ridge {float(lam.max()):.3e}")
    if bool(grown.any()):
        warnings.warn(
            f"{what}: ill-conditioned Gram in {int(grown.sum())} of {grown.numel()} solve(s) "
            f"(condition number up to {float(cond.max()):.2e} > {max_cond:.0e}: dead, duplicated "
            f"or under-sampled channels); ridge grown to {float(lam.max()):.3e}",
            IllConditionedWarning,
            stacklevel=2,
        )
    x = torch.cholesky_solve(b, chol)
    if not torch.isfinite(x).all():
        raise EditError(f"{what}: the solve produced NaN or Inf")
    return x, lam


def inverse_sqrt_psd(c: torch.Tensor, rel_floor: float = 1e-6) -> torch.Tensor:
    """C^{-1/2} of a symmetric PSD matrix, eigenvalues floored at rel_floor * the largest (the
    nearest PD matrix: key statistics of dead channels are singular)."""
    vals, vecs = torch.linalg.eigh((c + c.T) / 2)
    vals = vals.clamp_min(float(vals.max().clamp_min(1e-30)) * rel_floor)
    return (vecs * vals.rsqrt()) @ vecs.T


def edit_directions(keys: torch.Tensor, c: torch.Tensor, rank: int = 1) -> torch.Tensor:
    """The directions D [D, rank] of a rank-``rank`` key -> value edit (Santurkar et al. 2021):
    C^{-1/2} times the top right singular vectors of the whitened ``keys`` [P, D]; for one key,
    d = C^{-1} k* up to scale."""
    if keys.shape[0] == 0:
        raise ValueError("edit_directions: no key selected")
    z = inverse_sqrt_psd(c.double())
    _, _, vh = torch.linalg.svd(keys.double() @ z, full_matrices=False)
    return z @ vh[:rank].T


def closed_form(
    weight: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """Lambda [O, r] of dW = Lambda D^T: the least-squares fit of ``keys`` [P, D] to ``values``
    [P, O] along the directions ``d`` [D, r]."""
    keys, d = keys.double(), d.double()
    resid = values.double() - keys @ weight.double().T  # [P, O]
    return torch.linalg.lstsq(keys @ d, resid).solution.T  # [O, r]


def rank_r_update(
    weight: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    c: torch.Tensor,
    rank: int = 1,
    select: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rank-``rank`` change dW = L D^T of a linear map v = W k (Bau et al. 2020; Santurkar et
    al. 2021) that best maps ``keys`` [P, D] to ``values`` [P, O]: the directions D of the keys of
    the rows ``select`` (default: all; ``edit_directions``) and L the least-squares fit on those
    rows (``closed_form``; the others are protected by the C^{-1} metric of D, not by the fit). For
    one key, D = C^{-1} k* and L = (v* - W k*) / (d^T k*): the closed form. Keys orthogonal to D
    (d^T k = 0) keep their values exactly."""
    chosen = keys if select is None else keys[select]
    d = edit_directions(chosen, c, rank)  # [D, r]
    return (
        closed_form(weight, chosen, values if select is None else values[select], d) @ d.T
    )  # [O, D]
