import copy
import warnings

import pytest
import torch
from torch import nn

from pluginedit.capture import Request, collect
from pluginedit.core.errors import InputError
from pluginedit.editors.common.compensate import (
    compensate,
    refit_conv,
    refit_conv_full,
    refit_linear,
    slice_q,
)
from pluginedit.linalg import IllConditionedWarning, ridge_for, solve_spd
from pluginedit.stats import Gram


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _ridge_lstsq(a, b, lam):
    """argmin ||a x - b||^2 + lam ||x||^2 by an augmented least-squares problem (brute force)."""
    aug_a = torch.cat([a, lam**0.5 * torch.eye(a.shape[1], dtype=a.dtype)])
    aug_b = torch.cat([b, torch.zeros(a.shape[1], b.shape[1], dtype=b.dtype)])
    return torch.linalg.lstsq(aug_a, aug_b, driver="gelsd").solution


def _keep(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.zeros(n, dtype=torch.bool).index_fill_(0, torch.randperm(n, generator=g)[:k], True)


def _assert_linear_refit(x, w, keep, centred):
    """Check refit_linear against brute-force least squares on the rows ``x``."""
    n = x.shape[0]
    mean = x.mean(0) if centred else None
    gram = torch.cov(x.T, correction=0) if centred else x.T @ x / n
    new, shift, lam = refit_linear(w, gram, keep, mean=mean)
    xc = x[:, keep] - x[:, keep].mean(0) if centred else x[:, keep]
    xr = x[:, ~keep] - x[:, ~keep].mean(0) if centred else x[:, ~keep]
    delta = _ridge_lstsq(xc / n**0.5, xr @ w[:, ~keep].T / n**0.5, lam)
    ref = w[:, keep] + delta.T
    assert _rel(new[:, keep], ref) < 1e-6
    assert torch.all(new[:, ~keep] == 0)
    if centred:  # the refit is the best affine one: the output mean is preserved
        torch.testing.assert_close((x @ new.T + shift).mean(0), (x @ w.T).mean(0))
    return lam


@pytest.mark.parametrize("centred", [False, True])
def test_linear_refit_equals_least_squares_random(centred):
    x = torch.randn(400, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64) + 2.0
    w = torch.randn(5, 12, dtype=torch.float64)
    keep = _keep(12, 7)
    _assert_linear_refit(x, w, keep, centred)
    # with a vanishing ridge it is plain least squares on the kept inputs (with intercept if centred)
    gram = torch.cov(x.T, correction=0) if centred else x.T @ x / 400
    new, shift, _ = refit_linear(w, gram, keep, ridge=0.0, mean=x.mean(0) if centred else None)
    design = (
        torch.cat([x[:, keep], torch.ones(400, 1, dtype=x.dtype)], 1) if centred else x[:, keep]
    )
    sol = torch.linalg.lstsq(design, x @ w.T).solution
    assert _rel(new[:, keep], sol[: keep.sum()].T) < 1e-6
    if centred:
        assert _rel(shift, sol[-1]) < 1e-6


def _vgg_inputs(model, data, path, n=512):
    store = {}
    h = model.get_submodule(path).register_forward_hook(lambda m, i, o: store.update(x=i[0]))
    with torch.no_grad():
        model.eval()(data.x[:n])
    h.remove()
    return store["x"].double()


def test_linear_refit_equals_least_squares_real_activations(fmnist_vgg, fmnist):
    x = _vgg_inputs(fmnist_vgg, fmnist.train, "classifier.1")  # post-ReLU pooled features
    w = fmnist_vgg.classifier[1].weight.detach().double()
    keep = _keep(x.shape[1], x.shape[1] // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)  # real data may need it
        for centred in (False, True):
            _assert_linear_refit(x, w, keep, centred)


def test_conv_refit_equals_per_channel_least_squares_real_activations(fmnist_vgg, fmnist):
    conv = fmnist_vgg.features[3]
    x = _vgg_inputs(fmnist_vgg, fmnist.train, "features.3", n=48)
    g = Gram.for_module(conv, backend="torch")  # the fp64 reference
    g.update(x)
    w = conv.weight.detach().double()
    keep = _keep(conv.in_channels, conv.in_channels // 2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)
        new, _, _ = refit_conv(w, g.second_moment(), keep, ridge=1e-8)
    q = slice_q(w, g.second_moment())
    for c in range(0, conv.out_channels, 5):
        # A_ci: contribution of input channel i to output c, materialised (the brute force)
        a = nn.functional.conv2d(x, w[c][:, None], padding=conv.padding, groups=conv.in_channels)
        a = a.permute(0, 2, 3, 1).reshape(-1, conv.in_channels)
        lam = float(ridge_for(q[c][keep][:, keep], 1e-8)[0])
        n = a.shape[0]
        d = _ridge_lstsq(a[:, keep] / n**0.5, a[:, ~keep].sum(1, keepdim=True) / n**0.5, lam)
        scale = torch.zeros(conv.in_channels, dtype=torch.float64)
        scale[keep] = 1 + d[:, 0]
        assert _rel(new[c], w[c] * scale[:, None, None]) < 1e-6


def test_keep_all_changes_nothing(fmnist_vgg, fmnist):
    model = copy.deepcopy(fmnist_vgg)
    reqs = [
        Request(p, Gram.for_module(model.get_submodule(p)), "input")
        for p in ("features.3", "classifier.1")
    ]
    stats = collect(model, fmnist.train.subset(256), reqs)
    before = copy.deepcopy(model.state_dict())
    for r in reqs:
        m = model.get_submodule(r.module)
        n_in = m.weight.shape[1]
        assert compensate(m, stats[r], torch.ones(n_in, dtype=torch.bool)) == 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_compensation_beats_plain_removal_on_held_out_rows():
    torch.manual_seed(1)
    mix = torch.randn(8, 16)  # inputs near an 8-dim subspace: redundant
    x_cal, x_val = [torch.randn(n, 8) @ mix + 0.05 * torch.randn(n, 16) for n in (2000, 500)]
    layer = nn.Linear(16, 8)
    g = Gram(16)
    g.update(x_cal)
    keep = _keep(16, 10)
    with torch.no_grad():
        ref = layer(x_val)
        plain = copy.deepcopy(layer)
        plain.weight[:, ~keep] = 0
        compensate(layer, g, keep)
        assert (layer(x_val) - ref).norm() < 0.1 * (plain(x_val) - ref).norm()


@pytest.mark.parametrize("case", ["dead", "duplicated", "few_samples"])
def test_ill_conditioned_gram_grows_ridge_and_warns(case):
    x = torch.randn(300, 10, dtype=torch.float64)
    if case == "dead":
        x[:, 3] = 0
    elif case == "duplicated":
        x[:, 4] = x[:, 2]
    else:
        x = x[:6]
    w = torch.randn(4, 10, dtype=torch.float64)
    with pytest.warns(IllConditionedWarning, match="ridge grown"):
        new, _, lam = refit_linear(w, x.T @ x / x.shape[0], torch.arange(7))  # keeps 2, 3, 4
    assert torch.isfinite(new).all() and lam > 1e-4 * float((x * x).mean())


def test_well_conditioned_gram_does_not_warn_and_bad_input_is_an_error():
    x = torch.randn(500, 6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve_spd(x.T @ x, torch.ones(6, 1, dtype=torch.float64))
    with pytest.raises(InputError, match="NaN"):
        solve_spd(torch.full((3, 3), float("nan"), dtype=torch.float64), torch.ones(3, 1))
    with pytest.raises(InputError, match="at least one kept"):
        refit_linear(torch.randn(2, 3), torch.eye(3), torch.zeros(3, dtype=torch.bool))


def test_full_conv_refit_equals_least_squares_on_patches(fmnist_vgg, fmnist):
    conv = fmnist_vgg.features[3]
    x = _vgg_inputs(fmnist_vgg, fmnist.train, "features.3", n=32)
    g = Gram.for_module(conv, backend="torch")  # the fp64 reference
    g.update(x)
    w = conv.weight.detach().double()
    keep = _keep(conv.in_channels, 10, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)
        new, _, lam = refit_conv_full(w, g.second_moment(), keep)
    p = nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, w[0].numel())
    kp = keep.repeat_interleave(9)
    wf = w.reshape(w.shape[0], -1)
    n = p.shape[0]
    delta = _ridge_lstsq(p[:, kp] / n**0.5, p[:, ~kp] @ wf[:, ~kp].T / n**0.5, lam)
    assert _rel(new.reshape(w.shape[0], -1)[:, kp], wf[:, kp] + delta.T) < 1e-6


def test_cholesky_ridge_tracks_the_eigenvalue_ridge():
    """The solve's ridge comes from a Cholesky and a cheap condition estimate (no
    eigendecomposition): within a factor of 2 of the exact eigenvalue rule, equal where no
    growth is needed."""
    from pluginedit.linalg import regularised_cholesky

    g = torch.Generator().manual_seed(0)
    well = torch.randn(2000, 40, generator=g, dtype=torch.float64)
    low = torch.randn(2000, 10, generator=g, dtype=torch.float64) @ torch.randn(
        10, 40, generator=g, dtype=torch.float64
    )
    dup = well.clone()
    dup[:, 5] = dup[:, 7]
    for x in (well, low + 1e-3 * well, dup):
        a = x.T @ x / len(x)
        exact = ridge_for(a)[0]
        chol, lam, _, cond = regularised_cholesky(a)
        assert 0.5 <= float(lam / exact) <= 2.0, (float(lam), float(exact))
        torch.testing.assert_close(chol @ chol.T, a + lam * torch.eye(40, dtype=a.dtype))


def test_shrinkage_ridge_grows_as_rows_become_scarce():
    from pluginedit.linalg import shrinkage_ridge

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=g, dtype=torch.float64)
    ridges = []
    for n in (32, 64, 256, 100_000):
        x = torch.randn(n, 64, generator=g, dtype=torch.float64) @ mix
        ridges.append(float(shrinkage_ridge(torch.cov(x.T, correction=0), n)))
    assert ridges == sorted(ridges, reverse=True) and ridges[0] > 0.1 and ridges[-1] < 1e-3
