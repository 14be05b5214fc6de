"""Lower bounds on the total variation distance between two distributions from their moments.

Pure functions on float64 tensors, batched over any leading dimensions (channels, classes).
Two families (ALGORITHMS.md §2.3, §3.1-3.2):

* Gaussian Hellinger bounds (TVSPrune): TV >= H^2 = 1 - BC, with BC the Bhattacharyya
  coefficient of two Gaussians fitted to the moments. They return ``-log BC`` (>= 0), because
  1 - BC saturates at 1.0 in float for high-dimensional maps while -log BC keeps the ranking;
  ``hellinger_from_neglog`` turns it into the bound.
* Witness bounds (WitnessPrune / DisCEdit): TV >= D^2 / (D^2 + 2 (v_P + v_Q)) for any witness f
  (W1), and TV >= D^2 / (2 (E_P f^2 + E_Q f^2)) for raw moments (W2 with a = 0).

Degenerate inputs have defined values: a witness with zero mean difference scores 0 (even with
zero variance), and a zero-variance witness with a nonzero difference scores 1.
"""

from __future__ import annotations

import torch

from ..core.errors import InputError

RIDGE = (
    1e-4  # relative to the mean diagonal; only makes linear-witness bounds smaller, never invalid
)


def _check(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not torch.isfinite(t).all():
            raise InputError("NaN or Inf in the moments given to a bound")


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0/0 := 0 and x/0 := 1 (bounds are clipped to [0, 1])."""
    safe = torch.where(den > 0, den, torch.ones_like(den))
    out = torch.where(den > 0, num / safe, (num > 0).to(num.dtype))
    return out.clamp(0.0, 1.0)


# ---------------------------------------------------------------- witness bounds (§3.1-3.2)


def witness_bound(delta: torch.Tensor, var_p: torch.Tensor, var_q: torch.Tensor) -> torch.Tensor:
    """(W1): TV >= D^2 / (D^2 + 2 (v_P + v_Q)) for a scalar witness with mean difference D."""
    _check(delta, var_p, var_q)
    d2 = delta.square()
    return _ratio(d2, d2 + 2 * (var_p.clamp_min(0) + var_q.clamp_min(0)))


def raw_moment_bound(mean_p, mean_q, sq_p, sq_q) -> torch.Tensor:
    """(W2, a = 0): TV >= (E_P f - E_Q f)^2 / (2 (E_P f^2 + E_Q f^2))  (DisCEdit-U's score)."""
    _check(mean_p, mean_q, sq_p, sq_q)
    return _ratio((mean_p - mean_q).square(), 2 * (sq_p.clamp_min(0) + sq_q.clamp_min(0)))


def _feature_scale(cov: torch.Tensor) -> torch.Tensor:
    """Per-feature scale to unit diagonal (Fisher and MPM are invariant to it) so that s and s^2
    of very different magnitudes do not ruin the solve; zero-variance features stay unscaled."""
    d = torch.diagonal(cov, dim1=-2, dim2=-1)
    return torch.where(d > 0, d.clamp_min(1e-300).rsqrt(), torch.ones_like(d))


def _scaled(delta: torch.Tensor, cov: torch.Tensor):
    scale = _feature_scale(cov)
    return delta * scale, cov * scale.unsqueeze(-1) * scale.unsqueeze(-2)


def _ridged(cov: torch.Tensor, ridge: float) -> torch.Tensor:
    n = cov.shape[-1]
    diag_mean = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)
    eye = torch.eye(n, dtype=cov.dtype, device=cov.device)
    return cov + ridge * diag_mean.unsqueeze(-1) * eye


def fisher_value(
    delta: torch.Tensor, cov_p: torch.Tensor, cov_q: torch.Tensor, ridge: float = RIDGE
) -> torch.Tensor:
    """F = d^T (S_P + S_Q + ridge)^-1 d, batched over leading dims; d [..., n], S [..., n, n]."""
    _check(delta, cov_p, cov_q)
    delta, m = _scaled(delta, cov_p + cov_q)
    chol = torch.linalg.cholesky(_ridged(m, ridge))
    y = torch.cholesky_solve(delta.unsqueeze(-1), chol).squeeze(-1)
    return (delta * y).sum(-1).clamp_min(0)


def fisher_bound(delta, cov_p, cov_q, ridge: float = RIDGE) -> torch.Tensor:
    """The best linear witness for (W1): T = F / (2 + F). A witness with no mean difference
    scores exactly 0."""
    f = fisher_value(delta, cov_p, cov_q, ridge)
    return torch.where(delta.abs().amax(-1) > 0, f / (2 + f), torch.zeros_like(f))


def sqrtm_psd(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root by eigendecomposition (the authors' integer matrix_power is wrong)."""
    w, v = torch.linalg.eigh(cov)
    return (v * w.clamp_min(0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)


def mpm_direction(delta, cov_p, cov_q, iters: int = 100, ridge: float = RIDGE) -> torch.Tensor:
    """Minimax-probability-machine witness: argmin ||S_P^1/2 w|| + ||S_Q^1/2 w|| s.t. w^T d = 1,
    by Lanckriet et al.'s iterative least squares on w = w0 + N u (N spans d's orthogonal
    complement)."""
    n = delta.shape[-1]
    sp, sq = sqrtm_psd(_ridged(cov_p, ridge)), sqrtm_psd(_ridged(cov_q, ridge))
    dn = delta.square().sum(-1, keepdim=True).clamp_min(1e-300)
    w0 = delta / dn
    if n == 1:
        return w0
    # Orthogonal complement of d: the last n-1 columns of a QR of [d, I].
    eye = torch.eye(n, dtype=delta.dtype, device=delta.device).expand(*delta.shape[:-1], n, n)
    q, _ = torch.linalg.qr(torch.cat([delta.unsqueeze(-1), eye], -1))
    basis = q[..., 1:n]  # [..., n, n-1]
    ap, aq = sp @ basis, sq @ basis
    bp, bq = (sp @ w0.unsqueeze(-1)), (sq @ w0.unsqueeze(-1))
    beta = eta = torch.ones_like(delta[..., :1]).unsqueeze(-1)
    u = torch.zeros_like(basis[..., :1, :]).transpose(-1, -2)  # [..., n-1, 1]
    for _ in range(iters):
        lhs = ap.transpose(-1, -2) @ ap / beta + aq.transpose(-1, -2) @ aq / eta
        rhs = -(ap.transpose(-1, -2) @ bp / beta + aq.transpose(-1, -2) @ bq / eta)
        u = torch.linalg.solve(lhs, rhs)
        beta = (ap @ u + bp).norm(dim=-2, keepdim=True).clamp_min(1e-150)
        eta = (aq @ u + bq).norm(dim=-2, keepdim=True).clamp_min(1e-150)
    return w0 + (basis @ u).squeeze(-1)


def mpm_bound(delta, cov_p, cov_q, ridge: float = RIDGE) -> torch.Tensor:
    """(W1) evaluated at the MPM witness. With kappa = 1/(sigma_P + sigma_Q) this is at least
    kappa^2 / (2 + kappa^2) (since v_P + v_Q <= (sigma_P + sigma_Q)^2) and at most the Fisher
    bound."""
    _check(delta, cov_p, cov_q)
    scale = _feature_scale(cov_p + cov_q)
    d = delta * scale
    cov_p_s = cov_p * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    cov_q_s = cov_q * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    w = mpm_direction(d, cov_p_s, cov_q_s, ridge=ridge)
    quad = lambda s: (w.unsqueeze(-2) @ s @ w.unsqueeze(-1)).squeeze(-1).squeeze(-1)  # noqa: E731
    out = witness_bound((w * d).sum(-1), quad(cov_p_s), quad(cov_q_s))
    return torch.where(delta.abs().amax(-1) > 0, out, torch.zeros_like(out))


def robust_fisher_value(mean_p, mean_q, cov_p, cov_q, radius: float = 0.05, iters: int = 200):
    """min over m^_P in B(m_P, r||m_P||), m^_Q in B(m_Q, r||m_Q||) of
    (m^_P - m^_Q)^T (S_P + S_Q + rho I)^-1 (m^_P - m^_Q), rho = r (||S_P||_F + ||S_Q||_F).
    The two balls sum to one ball of radius R, so this is a trust-region problem in the
    eigenbasis of A = M^-1: 0 if ||d|| <= R, else x = lam (A + lam I)^-1 d with
    sum_i (a_i c_i / (a_i + lam))^2 = R^2, solved by bisection on lam."""
    _check(mean_p, mean_q, cov_p, cov_q)
    n = mean_p.shape[-1]
    rho = radius * (torch.linalg.matrix_norm(cov_p) + torch.linalg.matrix_norm(cov_q))
    m = cov_p + cov_q + rho.clamp_min(1e-300)[..., None, None] * torch.eye(n, dtype=cov_p.dtype)
    evals, evecs = torch.linalg.eigh(m)
    a = 1.0 / evals.clamp_min(1e-300)
    delta = mean_p - mean_q
    c = (evecs.transpose(-1, -2) @ delta.unsqueeze(-1)).squeeze(-1)
    r = radius * (mean_p.norm(dim=-1) + mean_q.norm(dim=-1))
    dn = delta.norm(dim=-1)
    lo = torch.zeros_like(dn)
    hi = a.amax(-1) * dn / r.clamp_min(1e-300) + 1.0
    for _ in range(iters):
        lam = (lo + hi) / 2
        dist2 = ((a * c) / (a + lam.unsqueeze(-1))).square().sum(-1)
        too_far = dist2 > r.square()  # moved less than allowed: lam too small
        lo, hi = torch.where(too_far, lam, lo), torch.where(too_far, hi, lam)
    lam = hi.unsqueeze(-1)
    value = (a * (lam * c / (a + lam)).square()).sum(-1)
    return torch.where(dn > r, value, torch.zeros_like(value))


def robust_fisher_bound(mean_p, mean_q, cov_p, cov_q, radius: float = 0.05) -> torch.Tensor:
    f = robust_fisher_value(mean_p, mean_q, cov_p, cov_q, radius)
    return f / (2 + f)


# ---------------------------------------------------------------- Gaussian Hellinger (§2.3)


def hellinger_from_neglog(neglog_bc: torch.Tensor) -> torch.Tensor:
    """TV >= H^2 = 1 - BC = 1 - exp(-(-log BC))."""
    return -torch.expm1(-neglog_bc)


def _var_floor(var: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    # A pixel that never varies (zero padding, dead ReLU) would make BC 0/0; floor it relative
    # to the typical variance so it contributes only through its mean difference.
    scale = torch.cat([var, other], -1).mean(-1, keepdim=True).clamp_min(1e-30)
    return var.clamp_min(1e-6 * scale)


def neglog_bc_iso(dist2, var_p, var_q, dim: int) -> torch.Tensor:
    """-log BC of N(m_P, v_P I) and N(m_Q, v_Q I) in ``dim`` dimensions, ||m_P - m_Q||^2 = dist2.
    With v_P = v_Q = v this is dist2 / (8 v): the ranking by ||m_P - m_Q|| of TVSPrune's code."""
    _check(dist2, var_p, var_q)
    vs = var_p + var_q
    if (vs <= 0).any():
        raise InputError("isotropic Hellinger bound needs a positive variance")
    return dist2 / (4 * vs) - dim / 2 * torch.log(2 * (var_p * var_q).sqrt() / vs)


def neglog_bc_diag(mean_p, var_p, mean_q, var_q) -> torch.Tensor:
    """-log BC of two diagonal Gaussians; the coefficient factorises over coordinates."""
    _check(mean_p, var_p, mean_q, var_q)
    vp, vq = _var_floor(var_p, var_q), _var_floor(var_q, var_p)
    vs = vp + vq
    per = (mean_p - mean_q).square() / (4 * vs) - 0.5 * torch.log(2 * (vp * vq).sqrt() / vs)
    return per.sum(-1).clamp_min(0)


def neglog_bc_full(mean_p, cov_p, mean_q, cov_q, ridge: float = RIDGE) -> torch.Tensor:
    """-log BC = 1/8 d^T S^-1 d + 1/2 log det S - 1/4 log det S_P - 1/4 log det S_Q,
    S = (S_P+S_Q)/2."""
    _check(mean_p, cov_p, mean_q, cov_q)
    # One ridge for all three matrices (relative to the pair's mean variance): keeps the
    # determinant terms consistent when the sample covariance is singular.
    diag = torch.diagonal(cov_p + cov_q, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30) / 2
    eye = torch.eye(cov_p.shape[-1], dtype=cov_p.dtype, device=cov_p.device)
    add = ridge * diag[..., None, None] * eye
    cp, cq = cov_p + add, cov_q + add
    cm = (cp + cq) / 2
    lm = torch.linalg.cholesky(cm)
    d = (mean_p - mean_q).unsqueeze(-1)
    maha = (d * torch.cholesky_solve(d, lm)).sum((-1, -2))
    logdet = lambda c: (
        2 * torch.log(torch.diagonal(torch.linalg.cholesky(c), dim1=-2, dim2=-1)).sum(-1)
    )  # noqa: E731
    return (maha / 8 + 0.5 * logdet(cm) - 0.25 * logdet(cp) - 0.25 * logdet(cq)).clamp_min(0)


# ---------------------------------------------------------------- aggregation and LDIFF


def pairs(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors (i, j) of the K(K-1)/2 class pairs i < j."""
    i, j = torch.triu_indices(num_classes, num_classes, offset=1)
    return i, j


def ldiff(scores: torch.Tensor) -> float:
    """LDIFF (reconstructed, ALGORITHMS.md §2.5): 1 - mean_j (s_j / max_i s_i). Near 0 when all
    filters of a layer are equally discriminative, near 1 when a few dominate. 0 for an all-zero
    layer."""
    top = scores.max()
    if top <= 0:
        return 0.0
    return float(1 - (scores / top).mean())
