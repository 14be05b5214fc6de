"""Every TV lower bound against the true TV of pairs with known TV (float64)."""

import math

import pytest
import torch

from pluginedit.core.errors import InputError
from pluginedit.scorers import bounds
from pluginedit.stats.class_moments import feature_moments

D = torch.float64
# (mu_p, sd_p, mu_q, sd_q): shifts, scale changes, both, and a nearly identical pair
GAUSS = [
    (0.0, 1.0, 1.0, 1.0),
    (0.0, 1.0, 0.0, 3.0),
    (0.5, 0.7, -1.0, 1.6),
    (0.0, 1.0, 0.05, 1.02),
    (2.0, 0.3, 2.5, 0.2),
]


def normal_pdf(x, mu, sd):
    return torch.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def true_tv_1d(p, q, lo=-30.0, hi=30.0, n=400_001):
    x = torch.linspace(lo, hi, n, dtype=D)
    return 0.5 * torch.trapezoid((p(x) - q(x)).abs(), x).item()


def gauss_power_sums(mu, sd):
    """(1, E x .. E x^4, 0, 0) of N(mu, sd^2): the power-sum layout of ClassMoments with n = 1."""
    v = sd * sd
    return torch.tensor(
        [mu, mu**2 + v, mu**3 + 3 * mu * v, mu**4 + 6 * mu**2 * v + 3 * v * v, 0, 0], dtype=D
    )


def uniform_power_sums(a, b):
    return torch.tensor(
        [(b ** (p + 1) - a ** (p + 1)) / ((p + 1) * (b - a)) for p in range(1, 5)] + [0, 0], dtype=D
    )


def moments(sums, features):
    return feature_moments(torch.ones((), dtype=D), sums.reshape(1, 6), features)


def all_witness_bounds(sp, sq):
    """Every implemented witness bound for P, Q given their power sums."""
    out = {}
    for feats in ("linear", "poly"):
        (mp, cp), (mq, cq) = moments(sp, feats), moments(sq, feats)
        out[f"fisher-{feats}"] = bounds.fisher_bound(mp - mq, cp, cq, ridge=0.0)
        out[f"mpm-{feats}"] = bounds.mpm_bound(mp - mq, cp, cq, ridge=0.0)
        out[f"robust-{feats}"] = bounds.robust_fisher_bound(mp, mq, cp, cq)
    out["w1-linear"] = bounds.witness_bound(sp[0] - sq[0], sp[1] - sp[0] ** 2, sq[1] - sq[0] ** 2)
    out["raw-linear"] = bounds.raw_moment_bound(sp[0], sq[0], sp[1], sq[1])
    return {k: float(v.reshape(-1)[0]) for k, v in out.items()}


@pytest.mark.parametrize("mp,sdp,mq,sdq", GAUSS)
def test_witness_bounds_below_true_tv_gaussian(mp, sdp, mq, sdq):
    tv = true_tv_1d(lambda x: normal_pdf(x, mp, sdp), lambda x: normal_pdf(x, mq, sdq))
    got = all_witness_bounds(gauss_power_sums(mp, sdp), gauss_power_sums(mq, sdq))
    for name, b in got.items():
        assert 0.0 <= b <= tv + 1e-9, (name, b, tv)
    assert got["mpm-poly"] <= got["fisher-poly"] + 1e-9
    assert got["robust-poly"] <= got["fisher-poly"] + 1e-9
    assert got["fisher-linear"] <= got["fisher-poly"] + 1e-9  # a richer witness never hurts


def test_known_values_and_quadratic_witness():
    # N(0,1) vs N(1,1): TV = 0.383, (W1) = 0.200, raw form = 0.167 (ALGORITHMS.md §3.1)
    got = all_witness_bounds(gauss_power_sums(0, 1), gauss_power_sums(1, 1))
    assert got["fisher-linear"] == pytest.approx(0.2, abs=1e-12)
    assert got["raw-linear"] == pytest.approx(1 / 6, abs=1e-12)
    # equal means, different variances: the linear witness sees nothing, (s, s^2) does
    got = all_witness_bounds(gauss_power_sums(0, 1), gauss_power_sums(0, 3))
    assert got["fisher-linear"] == 0.0 and got["fisher-poly"] > 0.1


@pytest.mark.parametrize("shift", [0.1, 0.4, 0.8])
def test_witness_bounds_below_true_tv_uniform(shift):
    # Uniform(0, 1) vs Uniform(a, 1 + a): TV = a exactly; not Gaussian
    got = all_witness_bounds(uniform_power_sums(0, 1), uniform_power_sums(shift, 1 + shift))
    for name, b in got.items():
        assert 0.0 <= b <= shift + 1e-9, (name, b, shift)
    assert got["fisher-poly"] > 0.5 * got["fisher-linear"] > 0


def test_exp_witness_raw_form_below_tv():
    # DisCEdit-U's witness f = exp(-|x|) on N(0,1) vs N(1.5, 0.5^2), moments by quadrature
    x = torch.linspace(-30, 30, 400_001, dtype=D)
    p, q = normal_pdf(x, 0, 1), normal_pdf(x, 1.5, 0.5)
    f = torch.exp(-x.abs())
    e = lambda dens, g: torch.trapezoid(dens * g, x)  # noqa: E731
    tv = 0.5 * torch.trapezoid((p - q).abs(), x).item()
    raw = bounds.raw_moment_bound(e(p, f), e(q, f), e(p, f * f), e(q, f * f)).item()
    w1 = bounds.witness_bound(
        e(p, f) - e(q, f), e(p, f * f) - e(p, f) ** 2, e(q, f * f) - e(q, f) ** 2
    ).item()
    assert 0 < raw <= w1 <= tv


def test_fisher_matches_closed_form_and_beats_every_linear_witness():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 3, generator=g, dtype=D), torch.randn(3, 3, generator=g, dtype=D)
    sp, sq = a @ a.T + 0.1 * torch.eye(3, dtype=D), b @ b.T + 0.1 * torch.eye(3, dtype=D)
    delta = torch.randn(3, generator=g, dtype=D)
    f = delta @ torch.linalg.solve(sp + sq, delta)
    assert bounds.fisher_bound(delta, sp, sq, ridge=0.0).item() == pytest.approx(
        (f / (2 + f)).item(), rel=1e-10
    )
    w = torch.randn(2000, 3, generator=g, dtype=D)
    per_w = bounds.witness_bound(w @ delta, ((w @ sp) * w).sum(1), ((w @ sq) * w).sum(1))
    assert per_w.max() <= f / (2 + f) + 1e-12
    # the ridge only lowers the bound
    assert bounds.fisher_bound(delta, sp, sq, ridge=1e-2) <= f / (2 + f)


def test_mpm_is_optimal_and_within_its_guarantee():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 2, generator=g, dtype=D), torch.randn(2, 2, generator=g, dtype=D)
    sp, sq = a @ a.T + 0.05 * torch.eye(2, dtype=D), b @ b.T + 0.05 * torch.eye(2, dtype=D)
    delta = torch.tensor([1.0, -0.5], dtype=D)
    w = bounds.mpm_direction(delta, sp, sq, ridge=0.0)
    obj = lambda v: (v @ sp @ v).sqrt() + (v @ sq @ v).sqrt()  # noqa: E731
    assert (w @ delta).item() == pytest.approx(1.0)
    for t in torch.linspace(-5, 5, 401, dtype=D):  # feasible w: w0 + t * (orthogonal direction)
        v = delta / delta.dot(delta) + t * torch.tensor([0.5, 1.0], dtype=D)
        assert obj(w) <= obj(v) + 1e-9
    kappa = 1 / obj(w)
    mpm = bounds.mpm_bound(delta, sp, sq, ridge=0.0)
    assert (
        kappa**2 / (2 + kappa**2) - 1e-12
        <= mpm
        <= bounds.fisher_bound(delta, sp, sq, ridge=0.0) + 1e-12
    )
    # sqrtm by eigendecomposition squares back
    assert torch.allclose(bounds.sqrtm_psd(sp) @ bounds.sqrtm_psd(sp), sp, atol=1e-12)


def test_robust_fisher_solves_its_trust_region():
    mp, mq = torch.tensor([2.0, 1.0], dtype=D), torch.tensor([0.5, -0.3], dtype=D)
    sp, sq = (
        torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=D),
        torch.tensor([[0.4, -0.1], [-0.1, 0.8]], dtype=D),
    )
    got = bounds.robust_fisher_value(mp, mq, sp, sq, radius=0.2).item()
    rho = 0.2 * (torch.linalg.matrix_norm(sp) + torch.linalg.matrix_norm(sq))
    minv = torch.linalg.inv(sp + sq + rho * torch.eye(2, dtype=D))
    r = 0.2 * (mp.norm() + mq.norm())
    ang = torch.linspace(0, 2 * math.pi, 4001, dtype=D)
    rad = torch.linspace(0, 1, 201, dtype=D)
    e = (rad[:, None, None] * r * torch.stack([ang.cos(), ang.sin()], -1)).reshape(-1, 2)
    x = (mp - mq) + e
    brute = ((x @ minv) * x).sum(1).min().item()
    assert got == pytest.approx(brute, rel=1e-4) and got <= brute + 1e-12
    # means within the uncertainty radius: no robust witness at all
    assert bounds.robust_fisher_value(mp, mp * 1.01, sp, sq).item() == 0.0


@pytest.mark.parametrize("mp,sdp,mq,sdq", GAUSS)
def test_hellinger_forms_below_tv_and_agree(mp, sdp, mq, sdq):
    tv = true_tv_1d(lambda x: normal_pdf(x, mp, sdp), lambda x: normal_pdf(x, mq, sdq))
    t = lambda v: torch.tensor([v], dtype=D)  # noqa: E731
    iso = bounds.neglog_bc_iso(t((mp - mq) ** 2), t(sdp**2), t(sdq**2), 1)
    diag = bounds.neglog_bc_diag(t(mp), t(sdp**2), t(mq), t(sdq**2))
    full = bounds.neglog_bc_full(
        t(mp), t(sdp**2).reshape(1, 1), t(mq), t(sdq**2).reshape(1, 1), ridge=0.0
    )
    closed = (mp - mq) ** 2 / (4 * (sdp**2 + sdq**2)) - 0.5 * math.log(
        2 * sdp * sdq / (sdp**2 + sdq**2)
    )
    for v in (iso, diag, full):
        assert v.item() == pytest.approx(closed, rel=1e-9, abs=1e-12)
        assert bounds.hellinger_from_neglog(v).item() <= tv + 1e-9


def test_hellinger_multivariate_below_tv():
    # 2-D Gaussians with different full covariances: TV by quadrature on a grid
    mp, mq = torch.tensor([0.0, 0.0], dtype=D), torch.tensor([1.0, 0.5], dtype=D)
    sp, sq = (
        torch.tensor([[1.0, 0.6], [0.6, 1.0]], dtype=D),
        torch.tensor([[0.5, 0.0], [0.0, 2.0]], dtype=D),
    )
    ax = torch.linspace(-10, 10, 1201, dtype=D)
    grid = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    pdf = lambda m, s: torch.distributions.MultivariateNormal(m, s).log_prob(grid).exp()  # noqa: E731
    tv = 0.5 * (pdf(mp, sp) - pdf(mq, sq)).abs().sum().item() * (ax[1] - ax[0]).item() ** 2
    full = bounds.hellinger_from_neglog(bounds.neglog_bc_full(mp, sp, mq, sq, ridge=0.0)).item()
    assert 0 < full <= tv
    # diagonal form of diagonal covariances equals the full form
    dq = torch.diagonal(sq)
    assert bounds.neglog_bc_diag(mp, dq, mq, dq * 2).item() == pytest.approx(
        bounds.neglog_bc_full(mp, sq, mq, sq * 2, ridge=0.0).item(), rel=1e-10
    )


def test_degenerate_inputs_are_defined_or_rejected():
    z = torch.zeros(3, dtype=D)
    assert bounds.witness_bound(z, z, z).tolist() == [0.0, 0.0, 0.0]  # constant, equal witness
    assert bounds.witness_bound(z + 1, z, z).tolist() == [1.0, 1.0, 1.0]  # separated without spread
    zc = torch.zeros(3, 2, 2, dtype=D)
    assert bounds.fisher_bound(torch.zeros(3, 2, dtype=D), zc, zc).tolist() == [0.0, 0.0, 0.0]
    assert bounds.raw_moment_bound(z, z, z, z).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(InputError, match="NaN"):
        bounds.witness_bound(torch.tensor([float("nan")], dtype=D), z[:1], z[:1])
    assert bounds.ldiff(torch.tensor([1.0, 1.0])) == 0.0
    assert bounds.ldiff(torch.tensor([1.0, 0.0, 0.0, 0.0])) == 0.75
    assert bounds.ldiff(torch.zeros(4)) == 0.0
