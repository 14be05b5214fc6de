"""Ridge-regularised symmetric solves shared by the TV bounds and the compensation refits.

A ridge ``ridge * mean(diag)`` is added and the matrix factored by Cholesky; no eigendecomposition.
When the factorisation fails (a pivot lost to rounding) the ridge of that matrix grows x10 until
``torch.linalg.cholesky_ex`` succeeds. The condition number is estimated cheaply: the largest
eigenvalue by a few power iterations, the smallest by a few inverse iterations through the
Cholesky factor (O(n^2) each); while that estimate exceeds ``max_cond`` (dead,
duplicated or under-sampled channels) the ridge grows to the value that would bring it to
``max_cond`` (at least x2 per round) and an ``IllConditionedWarning`` says so. No solve ever
returns NaN."""

from __future__ import annotations

import warnings

import torch

from .core.errors import EditError, InputError

DEFAULT_RIDGE = 1e-4
DEFAULT_MAX_COND = 1e4


class IllConditionedWarning(RuntimeWarning):
    """The Gram was ill-conditioned and the ridge had to grow."""


def ridge_for(a: torch.Tensor, ridge: float = DEFAULT_RIDGE, max_cond: float = DEFAULT_MAX_COND):
    """Ridge per matrix of the batch ``a`` [..., n, n] from its eigenvalues (exact, O(n^3) with a
    large constant: a reference for tests and small matrices; ``solve_spd`` estimates instead):
    ``ridge`` times the mean diagonal, grown where needed so that cond(a + lam I) <= max_cond.
    Returns (lam [...], grown [...] bool, cond [...])."""
    _check_ridge(ridge, max_cond)
    ev = torch.linalg.eigvalsh(a)
    lo, hi = ev[..., 0].clamp_min(0), ev[..., -1].clamp_min(0)
    base = _base_ridge(a, ridge)
    needed = (hi - max_cond * lo) / (max_cond - 1)  # solves (hi + l) / (lo + l) = max_cond
    lam = torch.maximum(base, needed)
    cond = (hi + base) / (lo + base)
    return lam, needed > base * (1 + 1e-9), cond


def _check_ridge(ridge, max_cond: float) -> None:
    """``ridge``: a number, or a tensor of one relative ridge per matrix."""
    if bool((torch.as_tensor(ridge) < 0).any()) or max_cond <= 1:
        raise InputError(f"need ridge >= 0 and max_cond > 1, got {ridge}, {max_cond}")


def _base_ridge(a: torch.Tensor, ridge) -> torch.Tensor:
    scale = a.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(0)
    ridge = torch.as_tensor(ridge, dtype=a.dtype, device=a.device)
    return (ridge * scale).clamp_min(torch.finfo(a.dtype).tiny ** 0.5)


def shrinkage_ridge(cov: torch.Tensor, n: float, cap: float = 1e6) -> torch.Tensor:
    """The relative ridge alpha / (1 - alpha) of the oracle-approximating shrinkage (OAS; Chen,
    Wiesel, Eldar, Hero 2010) of each sample covariance ``cov`` [..., p, p] estimated from ``n``
    rows: (1 - alpha) S + alpha tr(S)/p I, for a solve, is S + ridge * mean(diag S) I up to
    scale. Close to 0 when rows are plentiful (p / n small), large when a p-dimensional Gram
    comes from about p rows or fewer (where a plain solve amplifies the sampling noise of the
    smallest eigenvalues)."""
    p = cov.shape[-1]
    tr = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    tr2 = cov.square().sum((-2, -1))
    num = (1 - 2 / p) * tr2 + tr.square()
    den = (n + 1 - 2 / p) * (tr2 - tr.square() / p)
    alpha = torch.where(den > 0, num / den.clamp_min(torch.finfo(cov.dtype).tiny), 1.0)
    alpha = alpha.clamp(0, 1)
    return (alpha / (1 - alpha).clamp_min(1 / cap)).clamp_max(cap)


def top_eigenvalue(a: torch.Tensor, iters: int = 4) -> torch.Tensor:
    """A lower estimate of the largest eigenvalue of each symmetric PSD matrix of ``a``
    [..., n, n]: the Rayleigh quotient after ``iters`` power iterations from the all-ones vector
    (O(iters n^2); at least the largest diagonal entry)."""
    v = torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)
    for _ in range(iters):
        v = a @ v
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    rq = (v * (a @ v)).sum((-2, -1))
    return torch.maximum(rq, a.diagonal(dim1=-2, dim2=-1).amax(-1)).clamp_min(0)


def _low_end(a: torch.Tensor, chol: torch.Tensor, iters: int = 3):
    """Two cheap estimates from above of the low end of the spectrum, given the Cholesky factor
    ``chol`` of ``a + lam I`` ([..., n, n]): (v^T a v, an estimate of lambda_min(a), for v after
    ``iters`` inverse iterations (two triangular solves each, O(n^2)) from a fixed pseudo-random
    start (all-ones can be orthogonal to the null vector of two duplicated channels); the least
    squared pivot, bounding lambda_min(a + lam I))."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(*a.shape[:-1], 1, generator=g, dtype=a.dtype).to(a.device)
    for _ in range(iters):
        v = torch.cholesky_solve(v, chol)
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    rq = (v * (a @ v)).sum((-2, -1))  # v^T a v: v^T (a + lam I) v - lam
    pivots = chol.diagonal(dim1=-2, dim2=-1).square().amin(-1)
    return rq, pivots


def regularised_cholesky(
    a: torch.Tensor,
    ridge: float = DEFAULT_RIDGE,
    max_cond: float = DEFAULT_MAX_COND,
    what: str = "Gram",
):
    """(L, lam [...], grown [...] bool, cond estimate [...]) with L L^T = a + lam I for each
    symmetric PSD matrix of ``a`` [..., n, n] (the factorisation reads its lower triangle): the
    ridge starts at ``ridge`` times the mean diagonal, grows x10 where the Cholesky
    factorisation fails and, while the estimated condition number (largest eigenvalue by power
    iteration over the smallest by inverse iteration) exceeds ``max_cond``, to the ridge that
    estimate says brings it there (at least x2). One copy of ``a`` is made."""
    _check_ridge(ridge, max_cond)
    # at least the rounding level of the entries: a Gram of dead inputs is zero up to round-off
    # (a centred one even slightly negative on its diagonal) and its mean diagonal no scale
    noise = a.abs().amax((-2, -1)) * a.shape[-1] * torch.finfo(a.dtype).eps
    lam = torch.maximum(_base_ridge(a, ridge), noise)
    grown = torch.zeros(lam.shape, dtype=torch.bool, device=a.device)
    hi = top_eigenvalue(a)
    m = a.clone()
    diag = m.diagonal(dim1=-2, dim2=-1)
    diag.add_(lam[..., None])
    tiny = torch.finfo(a.dtype).tiny
    for _ in range(40):
        chol, info = torch.linalg.cholesky_ex(m)
        failed = info != 0
        new = torch.where(failed, lam * 10, lam)  # rounding broke a near-singular pivot
        if not bool(failed.any()):
            rq, pivots = _low_end(a, chol)
            lo = torch.minimum(rq + lam, pivots)  # >= lambda_min(a + lam I), estimated
            cond = (hi + lam) / lo.clamp_min(tiny)
            over = cond > max_cond * (1 + 1e-6)
            if not bool(over.any()):
                return chol, lam, grown, cond
            # (hi + l') / (lo - lam + l') = max_cond, lo - lam estimating lambda_min(a)
            needed = (hi - max_cond * (lo - lam)) / (max_cond - 1)
            new = torch.where(over, torch.maximum(needed, 2 * lam), lam)
        grown |= new != lam
        diag.add_((new - lam)[..., None])
        lam = new
    raise EditError(f"{what}: Cholesky failed even with ridge {float(lam.max()):.3e}")


def solve_spd(
    a: torch.Tensor,
    b: torch.Tensor,
    ridge: float = DEFAULT_RIDGE,
    max_cond: float = DEFAULT_MAX_COND,
    what: str = "Gram",
):
    """Solve (a + lam I) x = b for symmetric PSD ``a`` [..., n, n] by Cholesky (the ridge as
    ``regularised_cholesky`` sets it). Returns (x, lam [...])."""
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InputError(f"{what}: NaN or Inf in the system to solve")
    chol, lam, grown, cond = regularised_cholesky(a, ridge, max_cond, what)
    if bool(grown.any()):
        warnings.warn(
            f"{what}: ill-conditioned Gram in {int(grown.sum())} of {grown.numel()} solve(s) "
            f"(estimated condition number above {max_cond:.0e}: dead, duplicated or "
            f"under-sampled channels); ridge grown to {float(lam.max()):.3e}",
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
