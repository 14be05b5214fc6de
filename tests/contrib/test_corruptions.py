"""Corruptions: each one equals an independent reference formula, noise has the known mean and
variance and is reproducible by seed, odd shapes and normalised ranges work, severity orders the
damage, bad input is refused, and ``robustness`` reports the accuracies the model really has."""

from __future__ import annotations

import colorsys
import math

import pytest
import torch
from torch import nn

from pluginedit.contrib.corruptions import CORRUPTIONS, PARAMS, corrupt, robustness
from pluginedit.core.errors import InputError

NAMES = ["gaussian_noise", "shot_noise", "gaussian_blur", "contrast", "brightness", "pixelate"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _images(*shape, seed=0, dtype=torch.float32):
    return torch.rand(
        *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).to(dtype)


def test_registry_has_the_six_with_five_severities_and_dispatches():
    assert list(CORRUPTIONS) == NAMES
    x = _images(2, 3, 9, 9)
    for name, fn in CORRUPTIONS.items():
        assert len(PARAMS[name]) == 5
        torch.testing.assert_close(fn(x, 2, seed=3), corrupt(x, name, 2, seed=3), rtol=0, atol=0)


def test_constants_are_cifar10c():
    """The published CIFAR-10-C table (make_cifar_c.py), so results compare with the literature."""
    assert PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert PARAMS["shot_noise"] == (500, 250, 100, 75, 50)
    assert PARAMS["gaussian_blur"] == (0.4, 0.6, 0.7, 0.8, 1.0)
    assert PARAMS["contrast"] == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert PARAMS["brightness"] == (0.05, 0.1, 0.15, 0.2, 0.3)
    assert PARAMS["pixelate"] == (0.95, 0.9, 0.85, 0.75, 0.65)


# ---- deterministic corruptions against direct formulas ------------------------------------------


def _blur_reference(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Direct 2-D convolution with the outer-product kernel, borders by index clamping ('nearest')."""
    r = int(4.0 * sigma + 0.5)
    k1 = [math.exp(-t * t / (2 * sigma * sigma)) for t in range(-r, r + 1)]
    k1 = [v / sum(k1) for v in k1]
    h, w = x.shape[-2:]
    out = torch.zeros_like(x, dtype=torch.float64)
    for a in range(-r, r + 1):
        rows = (torch.arange(h) + a).clamp(0, h - 1)
        for b in range(-r, r + 1):
            cols = (torch.arange(w) + b).clamp(0, w - 1)
            out += k1[a + r] * k1[b + r] * x.double()[:, :, rows][:, :, :, cols]
    return out.clamp(0, 1)


@pytest.mark.parametrize("shape", [(2, 3, 13, 13), (1, 1, 7, 7), (1, 1, 5, 11)])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_blur_is_the_2d_convolution(shape, severity):
    x = _images(*shape, dtype=torch.float64)
    ref = _blur_reference(x, PARAMS["gaussian_blur"][severity - 1])
    torch.testing.assert_close(corrupt(x, "gaussian_blur", severity), ref, rtol=0, atol=1e-12)


def test_gaussian_blur_matches_scipy_as_skimage_calls_it():
    """skimage.filters.gaussian (the reference) is scipy's filter with mode='nearest', truncate=4."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images(2, 3, 12, 10, dtype=torch.float64)
    for s, sigma in enumerate(PARAMS["gaussian_blur"], 1):
        ref = ndimage.gaussian_filter(
            x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0
        )
        torch.testing.assert_close(
            corrupt(x, "gaussian_blur", s), torch.from_numpy(ref).clamp(0, 1), rtol=0, atol=1e-12
        )


def _pixelate_reference(x: torch.Tensor, c: float) -> torch.Tensor:
    """Explicit loops: cell (i, j) of the small grid averages the pixels whose centres lie in its
    footprint; each output pixel copies the cell under its centre."""
    n, ch, h, w = x.shape
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    fh, fw = h / sh, w / sw
    members_h = [[p for p in range(h) if i * fh < p + 0.5 <= (i + 1) * fh] for i in range(sh)]
    members_w = [[q for q in range(w) if j * fw < q + 0.5 <= (j + 1) * fw] for j in range(sw)]
    out = torch.empty_like(x)
    for p in range(h):
        i = math.floor((p + 0.5) * sh / h)
        for q in range(w):
            j = math.floor((q + 0.5) * sw / w)
            out[:, :, p, q] = x[:, :, members_h[i]][:, :, :, members_w[j]].mean(dim=(2, 3))
    return out


@pytest.mark.parametrize("shape", [(2, 3, 13, 13), (1, 1, 7, 7), (1, 2, 28, 17), (1, 1, 1, 3)])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_pixelate_is_block_means_copied_back(shape, severity):
    x = _images(*shape, dtype=torch.float64)
    ref = _pixelate_reference(x, PARAMS["pixelate"][severity - 1])
    torch.testing.assert_close(corrupt(x, "pixelate", severity), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [28, 32])
def test_pixelate_matches_pillow_box_resize(size):
    """The reference resizes with PIL BOX down and back; on float ('F') images we agree with it."""
    Image, np = pytest.importorskip("PIL.Image"), pytest.importorskip("numpy")
    x = _images(1, 1, size, size)
    for s, c in enumerate(PARAMS["pixelate"], 1):
        small = int(size * c)
        img = (
            Image.fromarray(x[0, 0].numpy())
            .resize((small, small), Image.BOX)
            .resize((size, size), Image.BOX)
        )
        torch.testing.assert_close(
            corrupt(x, "pixelate", s)[0, 0], torch.from_numpy(np.array(img)), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_contrast_is_the_formula_per_image_and_channel(severity):
    x, c = _images(3, 3, 7, 9), PARAMS["contrast"][severity - 1]
    ref = torch.empty_like(x)
    for n in range(3):
        for ch in range(3):
            m = x[n, ch].sum() / x[n, ch].numel()
            ref[n, ch] = ((x[n, ch] - m) * c + m).clamp(0, 1)
    torch.testing.assert_close(corrupt(x, "contrast", severity), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_grayscale_is_x_plus_c(severity):
    x = _images(2, 1, 28, 28)
    x[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.99, 0.5])  # black, white, near-white pixels
    ref = (x + PARAMS["brightness"][severity - 1]).clamp(0, 1)
    torch.testing.assert_close(corrupt(x, "brightness", severity), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_rgb_is_the_hsv_value_shift(severity):
    """The reference: rgb -> hsv, V + c clipped, hsv -> rgb (here via the standard library)."""
    x, c = _images(2, 3, 5, 5, dtype=torch.float64), PARAMS["brightness"][severity - 1]
    x[0, :, 0, 0] = 0.0  # black: hue and saturation 0
    x[0, :, 0, 1] = torch.tensor([0.97, 0.2, 0.5])  # V clips at 1
    ref = torch.empty_like(x)
    for n in range(2):
        for p in range(5):
            for q in range(5):
                h, s, v = colorsys.rgb_to_hsv(*x[n, :, p, q].tolist())
                ref[n, :, p, q] = torch.tensor(
                    colorsys.hsv_to_rgb(h, s, min(v + c, 1.0)), dtype=torch.float64
                )
    torch.testing.assert_close(corrupt(x, "brightness", severity), ref, rtol=0, atol=1e-12)


# ---- noise: statistics and seeds -----------------------------------------------------------------

GREY = torch.full((32, 3, 28, 28), 0.5)  # mid-grey: clipping is > 5 standard deviations away


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_gaussian_noise_has_the_known_mean_and_std(severity):
    c, d = (
        PARAMS["gaussian_noise"][severity - 1],
        (corrupt(GREY, "gaussian_noise", severity) - GREY).double(),
    )
    n = d.numel()
    assert abs(float(d.mean())) < 6 * c / math.sqrt(n)
    assert abs(float(d.std()) - c) < 6 * c / math.sqrt(2 * n)  # standard error of a normal std


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_shot_noise_is_poisson_counts_with_the_known_variance(severity):
    c = PARAMS["shot_noise"][severity - 1]
    out = corrupt(GREY, "shot_noise", severity).double()
    counts = out * c
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-3)  # whole photon counts
    d, n, lam = out - 0.5, GREY.numel(), 0.5 * c
    sd = math.sqrt(lam) / c  # Var = lam / c^2
    assert abs(float(d.mean())) < 6 * sd / math.sqrt(n)
    assert (
        abs(float(d.std()) - sd) < 6 * sd * math.sqrt((2 + 1 / lam) / n) / 2
    )  # Poisson kurtosis 1/lam


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise"])
def test_noise_is_reproducible_by_seed(name):
    x = _images(4, 3, 13, 13)
    a, b, other = (
        corrupt(x, name, 3, seed=7),
        corrupt(x, name, 3, seed=7),
        corrupt(x, name, 3, seed=8),
    )
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    assert torch.equal(x, _images(4, 3, 13, 13))  # the input is not modified


# ---- shapes, ranges, devices ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 7, 7),
        (1, 3, 7, 7),
        (2, 1, 28, 28),
        (3, 3, 13, 13),
        (2, 3, 13, 7),
        (1, 1, 1, 1),
        (0, 3, 8, 8),
    ],
)
def test_odd_shapes_keep_shape_dtype_device_and_range(shape, device):
    x = _images(*shape).to(device)
    for name in NAMES:
        for s in (1, 3, 5):
            out = corrupt(x, name, s, seed=1)
            assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
            assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all(), (name, s)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_dtype_is_kept(dtype):
    """Half is computed in float32 (same noise stream); float64 draws its own stream, so only the
    deterministic corruptions are compared with float32 there."""
    x = _images(2, 3, 7, 7, dtype=dtype)
    for name in NAMES:
        out = corrupt(x, name, 2)
        assert out.dtype == dtype
        if dtype == torch.float16 or "noise" not in name:
            torch.testing.assert_close(
                out.double(), corrupt(x.float(), name, 2).double(), rtol=0, atol=2e-3
            )


@pytest.mark.parametrize("name", NAMES)
def test_normalised_range_corrupts_as_the_unit_range_does(name):
    mean, std = 0.1307, 0.3081  # MNIST normalisation
    x = _images(4, 1, 28, 28, dtype=torch.float64)
    xn = (x - mean) / std
    got = corrupt(xn, name, 3, seed=5, lo=-mean / std, hi=(1 - mean) / std)
    torch.testing.assert_close(got, (corrupt(x, name, 3, seed=5) - mean) / std, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_higher_severity_does_more_damage(name):
    x = _images(8, 3, 28, 28)
    damage = [float((corrupt(x, name, s, seed=2) - x).abs().mean()) for s in range(1, 6)]
    assert all(a < b for a, b in zip(damage, damage[1:])), damage


def test_pixelate_severities_sharing_a_grid_do_equal_damage():
    """On 13x13, severities 2 and 3 both give an 11x11 grid (int(13 * c)): equal, never less."""
    x = _images(4, 3, 13, 13)
    damage = [float((corrupt(x, "pixelate", s) - x).abs().mean()) for s in range(1, 6)]
    assert all(a <= b for a, b in zip(damage, damage[1:])) and damage[1] == damage[2], damage


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="fog"), r"unknown corruption 'fog'; known: gaussian_noise, shot_noise"),
        (dict(severity=0), r"severity of contrast must be an integer in 1\.\.5; got 0"),
        (dict(severity=6), r"severity of contrast must be an integer in 1\.\.5; got 6"),
        (dict(severity=2.0), r"must be an integer"),
        (dict(severity=True), r"must be an integer"),
        (dict(x=torch.rand(3, 8, 8)), r"float image batch \[N, C, H, W\]; got a 3-D"),
        (dict(x=torch.zeros(1, 1, 4, 4, dtype=torch.uint8)), r"float image batch .*uint8"),
        (dict(x=[[0.5]]), r"float image batch .*got list"),
        (dict(lo=1.0, hi=1.0), r"finite lo < hi"),
        (dict(lo=0.0, hi=float("inf")), r"finite lo < hi"),
    ],
)
def test_bad_input_is_refused(kwargs, match):
    args = dict(x=torch.rand(1, 1, 4, 4), name="contrast", severity=1) | kwargs
    with pytest.raises(InputError, match=match):
        corrupt(**args)


# ---- robustness ----------------------------------------------------------------------------------


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    )


def test_robustness_reports_the_accuracies_the_model_has():
    model = _tiny_model()
    x = _images(40, 1, 7, 7)
    with torch.no_grad():
        model.eval()
        y = model(x).argmax(1)
        y[:15] = (y[:15] + 1) % 3  # 25/40 correct on clean data
        model.train()  # robustness must evaluate in eval mode
        res = robustness(
            model,
            x,
            y,
            names=["gaussian_noise", "pixelate"],
            severities=(1, 3),
            batch_size=7,
            seed=4,
        )
        assert model.training  # and restore the flag
        model.eval()
        want = {
            n: {
                s: float((model(corrupt(x, n, s, seed=4)).argmax(1) == y).float().mean())
                for s in (1, 3)
            }
            for n in ("gaussian_noise", "pixelate")
        }
    assert res["clean"] == pytest.approx(25 / 40)
    assert res["corrupted"].keys() == want.keys()
    for n, row in want.items():
        assert res["corrupted"][n] == pytest.approx(row)
    assert res["mean_corrupted"] == pytest.approx(
        sum(a for r in want.values() for a in r.values()) / 4
    )
    assert any(a != res["clean"] for r in want.values() for a in r.values())  # corruption mattered


def test_robustness_defaults_to_every_corruption_and_refuses_bad_arguments():
    model, x = _tiny_model().eval(), _images(6, 1, 7, 7)
    y = torch.zeros(6, dtype=torch.long)
    res = robustness(model, x, y)
    assert list(res["corrupted"]) == NAMES and all(
        list(r) == [1, 2, 3] for r in res["corrupted"].values()
    )
    with pytest.raises(InputError, match="unknown corruption 'snow'"):
        robustness(model, x, y, names=["contrast", "snow"])
    with pytest.raises(InputError, match="severity"):
        robustness(model, x, y, severities=(1, 9))
    with pytest.raises(InputError, match="one label per image"):
        robustness(model, x, y[:5])
    with pytest.raises(InputError, match="at least one"):
        robustness(model, x, y, names=[])
