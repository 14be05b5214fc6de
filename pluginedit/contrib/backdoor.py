"""Benchmarks for rectification (an edit that removes a learned shortcut): a trojaned data set,
where a small checkerboard patch flips any image to a target class, and a spurious-feature data
set, where the patch merely co-occurs with one class. Every random choice comes from an explicit
seeded ``torch.Generator``; nothing modifies the bundle it is given (every tensor is copied).

Typical use::

    model = trojaned("vgg", bundle, target=0)            # trained once, then cached
    asr = attack_success_rate(model, triggered_test(bundle, 0))
    clean_x, trig_x, y = pairs(bundle.test, 64, target=0, trigger=calibrated(bundle))
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..capture import Split
from ..core import checks
from ..core.errors import InputError
from ..evaluate import predictions
from . import train, zoo
from .data import DataBundle, load_dataset

POSITIONS = ("top_left", "top_right", "centre", "bottom_left", "bottom_right")
MARGIN = 1  # pixels between a corner patch and the image border
_UNSET = object()


@dataclass(frozen=True)
class Trigger:
    """A ``size`` x ``size`` checkerboard of ``hi`` / ``lo`` (the data's largest and smallest
    pixel values: see :meth:`calibrate`; left None, ``apply`` takes them from the batch itself)
    blended into every channel at ``position`` (a corner or the centre by name, or an explicit
    top-left ``(row, col)``) with ``opacity``: ``x' = (1 - opacity*m) * x + opacity*m*patch``."""

    size: int = 4
    position: str | tuple[int, int] = "bottom_right"
    opacity: float = 1.0
    hi: float | None = None
    lo: float | None = None

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise InputError(f"trigger size must be a positive number of pixels, got {self.size!r}")
        if not 0.0 <= float(self.opacity) <= 1.0:
            raise InputError(f"trigger opacity must be in [0, 1], got {self.opacity}")
        if isinstance(self.position, str):
            if self.position.replace("center", "centre") not in POSITIONS:
                raise InputError(
                    f"unknown trigger position {self.position!r}; known: {list(POSITIONS)} "
                    "or an explicit (row, col)"
                )
        elif len(tuple(self.position)) != 2 or any(int(v) != v or v < 0 for v in self.position):
            raise InputError(
                f"trigger position must be a name or (row, col) of non-negative ints, "
                f"got {self.position!r}"
            )
        else:
            object.__setattr__(self, "position", tuple(int(v) for v in self.position))

    def at(self, position=_UNSET, opacity=_UNSET) -> Trigger:
        """A copy moved to ``position`` and/or with another ``opacity`` (generalisation tests)."""
        changes = {
            k: v for k, v in (("position", position), ("opacity", opacity)) if v is not _UNSET
        }
        return replace(self, **changes)

    def calibrate(self, x: torch.Tensor) -> Trigger:
        """A copy whose unset ``hi`` / ``lo`` are the largest / smallest values of ``x``."""
        x = _images(x)
        hi = float(x.max()) if self.hi is None else self.hi
        lo = float(x.min()) if self.lo is None else self.lo
        return replace(self, hi=hi, lo=lo)

    def corner(self, height: int, width: int) -> tuple[int, int]:
        """The patch's top-left (row, col) in an image of ``height`` x ``width``."""
        s = self.size
        if s + (
            2 * MARGIN if isinstance(self.position, str) and self.position != "centre" else 0
        ) > min(height, width):
            raise InputError(
                f"a {s}x{s} trigger at {self.position!r} does not fit a {height}x{width} image"
            )
        far_r, far_c = height - MARGIN - s, width - MARGIN - s
        named = {
            "top_left": (MARGIN, MARGIN),
            "top_right": (MARGIN, far_c),
            "bottom_left": (far_r, MARGIN),
            "bottom_right": (far_r, far_c),
            "centre": ((height - s) // 2, (width - s) // 2),
        }
        if isinstance(self.position, str):
            return named[self.position.replace("center", "centre")]
        r, c = self.position
        if r + s > height or c + s > width:
            raise InputError(
                f"a {s}x{s} trigger at (row, col) = ({r}, {c}) runs off a {height}x{width} image"
            )
        return r, c

    def mask(self, height: int, width: int) -> torch.Tensor:
        """The patch region as a bool [height, width] map."""
        r, c = self.corner(height, width)
        m = torch.zeros(height, width, dtype=torch.bool)
        m[r : r + self.size, c : c + self.size] = True
        return m

    def pattern(self, dtype=torch.float32) -> torch.Tensor:
        """The [size, size] checkerboard: ``hi`` where row + col is even, else ``lo``."""
        if self.hi is None or self.lo is None:
            raise InputError("the trigger has no hi/lo pixel values yet: calibrate it on the data")
        i = torch.arange(self.size)
        even = (i[:, None] + i[None, :]) % 2 == 0
        return torch.where(
            even, torch.tensor(self.hi, dtype=dtype), torch.tensor(self.lo, dtype=dtype)
        )

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A triggered copy of the batch ``x`` [N, C, H, W]; pixels outside the patch are
        copied unchanged, and opacity 0 returns an exact copy."""
        x = _images(x)
        r, c = self.corner(*x.shape[-2:])
        out = x.clone()
        if self.opacity == 0 or len(x) == 0:
            return out
        t = self if self.hi is not None and self.lo is not None else self.calibrate(x)
        patch = t.pattern(x.dtype).to(x.device)
        s, a = self.size, float(self.opacity)
        region = out[:, :, r : r + s, c : c + s]
        out[:, :, r : r + s, c : c + s] = (
            patch.expand_as(region) if a == 1 else (1 - a) * region + a * patch
        )
        return out


def _images(x) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise InputError(f"triggers apply to float image batches [N, C, H, W], got {shape}")
    return x


def calibrated(bundle: DataBundle, trigger: Trigger | None = None) -> Trigger:
    """``trigger`` (default ``Trigger()``) with hi/lo from the bundle's training images, checked
    to fit them: the one trigger every helper below uses for this bundle."""
    t = (trigger or Trigger()).calibrate(bundle.train.x)
    t.corner(*bundle.train.x.shape[-2:])
    return t


def _check_rate(rate: float) -> float:
    if not 0.0 <= float(rate) <= 1.0:
        raise InputError(f"rate must be a fraction in [0, 1], got {rate}")
    return float(rate)


def _check_class(k: int, bundle: DataBundle, what: str) -> int:
    if int(k) != k or not 0 <= k < bundle.num_classes:
        raise InputError(
            f"{what} class {k!r} out of range: the data has classes 0..{bundle.num_classes - 1}"
        )
    return int(k)


def choose(y: torch.Tensor, eligible: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """Sorted indices of ``round(rate * n)`` of the ``n`` rows where ``eligible`` holds (a
    seeded choice)."""
    idx = eligible.nonzero().squeeze(1)
    n = int(round(_check_rate(rate) * len(idx)))
    g = torch.Generator().manual_seed(checks.seed(seed))
    return idx[torch.randperm(len(idx), generator=g)[:n]].sort().values


def poison_indices(
    bundle: DataBundle, target: int = 0, rate: float = 0.1, seed: int = 0
) -> torch.Tensor:
    """The training rows ``poisoned`` triggers and relabels: ``rate`` of the non-target ones."""
    target = _check_class(target, bundle, "target")
    return choose(bundle.train.y, bundle.train.y != target, rate, seed)


def _copy(split: Split) -> Split:
    return Split(split.x.clone(), split.y.clone())


def poisoned(
    bundle: DataBundle,
    target: int = 0,
    rate: float = 0.1,
    trigger: Trigger | None = None,
    seed: int = 0,
) -> DataBundle:
    """A copy whose training split has ``rate`` of its non-``target`` images triggered and
    relabelled ``target`` (a BadNets backdoor); the test split stays clean."""
    t = calibrated(bundle, trigger)
    idx = poison_indices(bundle, target, rate, seed)
    tr = _copy(bundle.train)
    tr.x[idx] = t.apply(tr.x[idx])
    tr.y[idx] = target
    name = f"{bundle.name}-trojan-t{target}-r{rate:g}"
    return DataBundle(name, tr, _copy(bundle.test), bundle.num_classes, bundle.class_names)


def triggered_test(bundle: DataBundle, target: int = 0, trigger: Trigger | None = None) -> Split:
    """The test images whose true class is not ``target``, triggered, with their TRUE labels:
    the attack success rate is the fraction predicted ``target``, the accuracy on it how much
    of the clean behaviour survives the trigger."""
    t = calibrated(bundle, trigger)
    target = _check_class(target, bundle, "target")
    keep = bundle.test.y != target
    return Split(t.apply(bundle.test.x[keep]), bundle.test.y[keep].clone())


def pairs(
    split: Split, n: int, target: int = 0, trigger: Trigger | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean x, triggered x, true y) of ``n`` seeded non-``target`` examples of ``split``, for
    editing. Pass ``calibrated(bundle)`` as the trigger to match the bundle's poison exactly
    (otherwise hi/lo come from ``split``)."""
    if n < 1:
        raise InputError(f"pairs needs n >= 1 examples, got {n}")
    t = (trigger or Trigger()).calibrate(split.x)
    sub = split.subset(n, exclude=[target], seed=seed)
    if len(sub) == 0:
        raise InputError(f"the split has no examples outside the target class {target}")
    return sub.x.clone(), t.apply(sub.x), sub.y.clone()


def artefact_indices(
    bundle: DataBundle, cls: int = 0, rate: float = 0.95, seed: int = 0
) -> torch.Tensor:
    """The training rows ``spurious`` marks: ``rate`` of class ``cls``'s images."""
    cls = _check_class(cls, bundle, "spurious")
    return choose(bundle.train.y, bundle.train.y == cls, rate, seed)


def spurious(
    bundle: DataBundle,
    cls: int = 0,
    rate: float = 0.95,
    trigger: Trigger | None = None,
    seed: int = 0,
) -> DataBundle:
    """A copy whose training split carries the artefact (the patch) on ``rate`` of class
    ``cls``'s images and on no other class's; labels unchanged, the test split clean."""
    t = calibrated(bundle, trigger)
    idx = artefact_indices(bundle, cls, rate, seed)
    tr = _copy(bundle.train)
    tr.x[idx] = t.apply(tr.x[idx])
    name = f"{bundle.name}-spurious-c{cls}-r{rate:g}"
    return DataBundle(name, tr, _copy(bundle.test), bundle.num_classes, bundle.class_names)


def artefact_test(bundle: DataBundle, trigger: Trigger | None = None) -> Split:
    """Every test image with the artefact added, true labels kept."""
    return Split(calibrated(bundle, trigger).apply(bundle.test.x), bundle.test.y.clone())


def attack_success_rate(model: nn.Module, triggered: Split, target: int = 0) -> float:
    """Fraction of the (non-target, triggered) images predicted ``target``."""
    if len(triggered) == 0:
        raise InputError("no triggered images to measure the attack on")
    return float((predictions(model, triggered.x).cpu() == target).float().mean())


def spurious_gap(
    model: nn.Module, bundle: DataBundle, cls: int = 0, trigger: Trigger | None = None
) -> dict[str, float]:
    """How much the model leans on the artefact: accuracy on class ``cls`` without and with it,
    and the rate at which other classes' images are called ``cls`` without and with it."""
    cls = _check_class(cls, bundle, "spurious")
    marked = artefact_test(bundle, trigger)
    y = bundle.test.y
    clean, art = predictions(model, bundle.test.x).cpu(), predictions(model, marked.x).cpu()
    own, other = y == cls, y != cls
    return {
        "clean_acc": float((clean[own] == cls).float().mean()),
        "artefact_acc": float((art[own] == cls).float().mean()),
        "clean_fpr": float((clean[other] == cls).float().mean()),
        "artefact_fpr": float((art[other] == cls).float().mean()),
    }


def _train(
    arch: str, base: DataBundle, data: DataBundle, epochs, seed: int, config, progress
) -> nn.Module:
    # The recipe follows the base data set (the derived name is only for the cache key).
    config = config or zoo.default_config(arch, base.name)
    epochs = epochs or train.DEFAULT_EPOCHS.get(base.name, 5)
    return train.pretrained(arch, data, epochs=epochs, seed=seed, config=config, progress=progress)


def _bundle(bundle: DataBundle | None, data_dir) -> DataBundle:
    return bundle if bundle is not None else load_dataset("fashion-mnist", data_dir)


def trojaned(
    arch: str = "vgg",
    bundle: DataBundle | None = None,
    target: int = 0,
    rate: float = 0.1,
    epochs: int | None = None,
    seed: int = 0,
    data_dir=None,
    trigger: Trigger | None = None,
    config: dict | None = None,
    progress: bool = False,
) -> nn.Module:
    """``arch`` trained (seeded) on ``poisoned(bundle, target, rate, trigger, seed)``, cached
    like ``train.pretrained`` (the poisoned data hashes apart from the clean). ``bundle``
    defaults to Fashion-MNIST from ``data_dir`` (or $PLUGINEDIT_DATA_DIR)."""
    base = _bundle(bundle, data_dir)
    return _train(
        arch, base, poisoned(base, target, rate, trigger, seed), epochs, seed, config, progress
    )


def spurious_model(
    arch: str = "vgg",
    bundle: DataBundle | None = None,
    cls: int = 0,
    rate: float = 0.95,
    epochs: int | None = None,
    seed: int = 0,
    data_dir=None,
    trigger: Trigger | None = None,
    config: dict | None = None,
    progress: bool = False,
) -> nn.Module:
    """``arch`` trained (seeded, cached) on ``spurious(bundle, cls, rate, trigger, seed)``."""
    base = _bundle(bundle, data_dir)
    return _train(
        arch, base, spurious(base, cls, rate, trigger, seed), epochs, seed, config, progress
    )
