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
    where needed so that cond(a + lam I) <= max_cond. Returns (lam [...], grown [...] bool, cond [...])."""
    if ridge < 0 or max_cond <= 1:
        raise InputError(f"need ridge >= 0 and max_cond > 1, got {ridge}, {max_cond}")
    ev = torch.linalg.eigvalsh(a)
    lo, hi = ev[..., 0].clamp_min(0), ev[..., -1].clamp_min(0)
    scale = a.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(0)
    tiny = torch.finfo(a.dtype).tiny ** 0.5
    base = (ridge * scale).clamp_min(tiny)
    needed = (hi - max_cond * lo) / (max_cond - 1)            # solves (hi + l) / (lo + l) = max_cond
    lam = torch.maximum(base, needed)
    cond = (hi + base) / (lo + base)
    return lam, needed > base * (1 + 1e-9), cond


def solve_spd(a: torch.Tensor, b: torch.Tensor, ridge: float = DEFAULT_RIDGE,
              max_cond: float = DEFAULT_MAX_COND, what: str = "Gram"):
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
        lam = torch.where(info != 0, lam * 10, lam)            # rounding broke a near-singular pivot
    else:
        raise EditError(f"{what}: Cholesky failed even with ridge {float(lam.max()):.3e}")
    if bool(grown.any()):
        warnings.warn(
            f"{what}: ill-conditioned Gram in {int(grown.sum())} of {grown.numel()} solve(s) "
            f"(condition number up to {float(cond.max()):.2e} > {max_cond:.0e}: dead, duplicated or "
            f"under-sampled channels); ridge grown to {float(lam.max()):.3e}", IllConditionedWarning,
            stacklevel=2)
    x = torch.cholesky_solve(b, chol)
    if not torch.isfinite(x).all():
        raise EditError(f"{what}: the solve produced NaN or Inf")
    return x, lam
