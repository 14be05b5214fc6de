"""Common corruptions for robustness evaluation (ImageNet-C / CIFAR-10-C, Hendrycks & Dietterich
2019), as batched torch functions that run on the tensor's device.

Images are [N, C, H, W] floats as the model sees them, possibly normalised: ``lo`` and ``hi`` give
the valid pixel range. Each corruption maps x to [0, 1] by (x - lo) / (hi - lo), applies the
reference formula there (clipping to [0, 1] where the reference clips) and maps back, so a
normalised batch is corrupted exactly as its [0, 1] original would be. Randomness comes from a
``torch.Generator`` on x's device seeded with ``seed``: reproducible per device and compute
dtype (CPU and CUDA streams differ; float64 draws its own)."""

from __future__ import annotations

import math
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

from ..capture.inputs import model_device
from ..core import checks
from ..core.errors import InputError
from ..evaluate import predictions

# Severity constants 1..5 of CIFAR-10-C (hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py):
# they were set for 32x32 images, the scale of the small (MNIST/CIFAR-like) images edited here.
PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise standard deviation
    "shot_noise": (500, 250, 100, 75, 50),  # photon count of a full-intensity pixel
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on deviations from the mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # side of the coarse grid, a fraction
}


def _gaussian_noise(u: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(u.shape, generator=g, device=u.device, dtype=u.dtype)
    return (u + c * z).clamp(0, 1)


def _shot_noise(u: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    # Poisson rates must be >= 0; in-range pixels are, so the clamp only guards stray ones.
    return (torch.poisson(u.clamp_min(0) * c, generator=g) / c).clamp(0, 1)


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    r = int(4.0 * sigma + 0.5)  # scipy.ndimage's radius for truncate=4 (skimage's default)
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(u: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    # The reference, skimage.filters.gaussian, extends the border with mode='nearest': that is
    # torch's 'replicate' (not 'reflect'), which also works for any radius on tiny images.
    n, ch, h, w = u.shape
    k = _gaussian_kernel(c, u.device, u.dtype)
    r = len(k) // 2
    v = F.pad(u.reshape(n * ch, 1, h, w), (r, r, r, r), mode="replicate")
    v = F.conv2d(F.conv2d(v, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))  # separable, per channel
    return v.reshape(n, ch, h, w).clamp(0, 1)


def _contrast(u: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    m = u.mean(dim=(2, 3), keepdim=True)  # per image and channel, as the reference's mean over H, W
    return ((u - m) * c + m).clamp(0, 1)


def _brightness(u: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    # ImageNet-C adds c to the HSV value V = max over channels, hue and saturation kept. With those
    # fixed every channel is proportional to V, so the HSV round trip is a rescale by V'/V (black,
    # S = 0, turns grey V'). Exact for RGB, x + c clipped for one channel, the same rule for any C.
    v = u.amax(dim=1, keepdim=True)
    ratio = torch.where(v > 0, u / v.clamp_min(torch.finfo(u.dtype).tiny), torch.ones_like(u))
    return (ratio * (v + c).clamp(0, 1)).clamp(0, 1)


def _pixelate_axis(size: int, small: int, device, dtype) -> torch.Tensor:
    """[size, size] operator of Pillow's BOX resize to ``small`` and back along one axis. Down, a
    cell averages the pixels whose centres fall in its footprint, i*s < j + 0.5 <= (i+1)*s with
    s = size/small (in integers, so no rounding); up, BOX copies the cell under each pixel's
    centre, i.e. nearest-centre sampling."""
    j = torch.arange(size, device=device)
    cell = ((2 * j + 1) * small - 1) // (2 * size)
    down = (cell[None, :] == torch.arange(small, device=device)[:, None]).to(dtype)
    down = down / down.sum(1, keepdim=True)
    return down[(2 * j + 1) * small // (2 * size)]


def _pixelate(u: torch.Tensor, c: float, g: torch.Generator) -> torch.Tensor:
    h, w = u.shape[-2:]
    rows = _pixelate_axis(h, max(1, int(h * c)), u.device, u.dtype)  # int(32 * c) in the reference
    cols = _pixelate_axis(w, max(1, int(w * c)), u.device, u.dtype)
    return rows @ u @ cols.T  # averages of in-range pixels: no clipping, as the reference


_IMPL = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
}


def _check(x, name: str, severity, lo: float, hi: float) -> None:
    if name not in _IMPL:
        raise InputError(f"unknown corruption {name!r}; known: {', '.join(_IMPL)}")
    if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
        got = f"a {x.dim()}-D {x.dtype} tensor" if torch.is_tensor(x) else type(x).__name__
        raise InputError(f"corruptions take a float image batch [N, C, H, W]; got {got}")
    top = len(PARAMS[name])
    if isinstance(severity, bool) or not isinstance(severity, Integral) or not 1 <= severity <= top:
        raise InputError(f"severity of {name} must be an integer in 1..{top}; got {severity!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError(f"the pixel range needs finite lo < hi; got lo={lo}, hi={hi}")


def corrupt(
    x: torch.Tensor, name: str, severity: int, seed: int = 0, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
    """``x`` corrupted by ``name`` at ``severity``, same shape, dtype and device; values in
    [lo, hi] (pixelate, an average, keeps the input's range)."""
    _check(x, name, severity, lo, hi)
    if x.numel() == 0:
        return x.clone()
    work = torch.promote_types(x.dtype, torch.float32)  # half inputs are computed in float32
    g = torch.Generator(device=x.device).manual_seed(checks.seed(seed))
    u = (x.to(work) - lo) / (hi - lo)
    out = _IMPL[name](u, float(PARAMS[name][int(severity) - 1]), g)
    return (out * (hi - lo) + lo).to(x.dtype)


def gaussian_noise(x, severity: int = 1, seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    """x + N(0, c^2), clipped (sensor noise in low light)."""
    return corrupt(x, "gaussian_noise", severity, seed, lo, hi)


def shot_noise(x, severity: int = 1, seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    """Poisson(x * c) / c, clipped (photon counting noise)."""
    return corrupt(x, "shot_noise", severity, seed, lo, hi)


def gaussian_blur(x, severity: int = 1, seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    """Gaussian filter of sigma c per channel, borders replicated, clipped."""
    return corrupt(x, "gaussian_blur", severity, seed, lo, hi)


def contrast(x, severity: int = 1, seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    """(x - mean) * c + mean per image and channel, clipped."""
    return corrupt(x, "contrast", severity, seed, lo, hi)


def brightness(x, severity: int = 1, seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    """HSV value + c, clipped (x + c for grayscale)."""
    return corrupt(x, "brightness", severity, seed, lo, hi)


def pixelate(x, severity: int = 1, seed: int = 0, lo: float = 0.0, hi: float = 1.0):
    """BOX downsampling to a c-fraction grid, then back up with nearest-centre sampling."""
    return corrupt(x, "pixelate", severity, seed, lo, hi)


CORRUPTIONS = {
    f.__name__: f
    for f in (gaussian_noise, shot_noise, gaussian_blur, contrast, brightness, pixelate)
}


@torch.no_grad()
def robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    names=None,
    severities=(1, 2, 3),
    batch_size: int = 512,
    seed: int = 0,
    lo: float = 0.0,
    hi: float = 1.0,
) -> dict:
    """Top-1 accuracy of ``model`` (eval mode, on its device) on clean and corrupted ``x``:
    {"clean": acc, "corrupted": {name: {severity: acc}}, "mean_corrupted": mean of those}. Every
    (name, severity) uses the same ``seed``, so noise levels differ only in scale."""
    names = list(CORRUPTIONS) if names is None else list(names)
    severities = list(severities)
    if not names or not severities:
        raise InputError("robustness needs at least one corruption name and one severity")
    for name in names:
        for s in severities:
            _check(x, name, s, lo, hi)  # every bad argument before any model run
    if len(x) == 0 or not torch.is_tensor(y) or y.shape != (len(x),):
        raise InputError(
            f"need a non-empty batch and one label per image; got x {tuple(x.shape)}, "
            f"y {tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}"
        )
    device = model_device(model)
    x, y = x.to(device), y.to(device)

    def acc(batch: torch.Tensor) -> float:
        return float((predictions(model, batch, batch_size) == y).double().mean())

    table = {n: {s: acc(corrupt(x, n, s, seed, lo, hi)) for s in severities} for n in names}
    values = [a for row in table.values() for a in row.values()]
    return {"clean": acc(x), "corrupted": table, "mean_corrupted": sum(values) / len(values)}
