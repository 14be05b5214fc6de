"""Data: scikit-learn's digits (the embedded default), MNIST / Fashion-MNIST from idx files on
disk, plain tensors or any DataLoader. Nothing is ever downloaded."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..capture import Split, as_loader, check_classes  # noqa: F401 (re-exported)
from ..core import checks
from ..core.errors import InputError
from . import files

DATA_ENV = "PLUGINEDIT_DATA_DIR"
_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SUBDIR = {"mnist": ("mnist", "MNIST"), "fashion-mnist": ("fashion-mnist", "FashionMNIST")}
FASHION_CLASSES = (
    "T-shirt",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass
class DataBundle:
    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def _normalise(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return ((x - mean) / std).float()


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), a stratified seeded split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    checks.seed(seed, bits=32)  # scikit-learn's random_state is a 32-bit seed
    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = train_test_split(
        np.arange(len(y)), test_size=test_fraction, stratify=d.target, random_state=seed
    )
    mean, std = x[tr].mean().item(), x[tr].std().item()
    x = _normalise(x, mean, std)
    names = tuple(str(i) for i in range(10))
    return DataBundle("digits", Split(x[tr], y[tr]), Split(x[te], y[te]), 10, names)


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (gzipped or not) of unsigned bytes as a numpy array; every way it can be
    damaged is an InputError naming the file."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise InputError(
            f"{path}: not a readable gzip file ({type(e).__name__}: {e}); "
            "the download may be truncated or not gzipped"
        ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise InputError(f"{path}: not an idx file (bad magic number)")
    if raw[2] != 0x08:
        raise InputError(f"{path}: idx data type 0x{raw[2]:02x}, expected 0x08 (unsigned bytes)")
    nd = raw[3]
    if nd == 0 or len(raw) < 4 + 4 * nd:
        raise InputError(f"{path}: idx header declares {nd} dimensions but is cut short")
    dims = struct.unpack(">" + "I" * nd, raw[4 : 4 + 4 * nd])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * nd)
    if data.size != int(np.prod(dims)):
        raise InputError(f"{path} is truncated: header says {dims}, found {data.size} bytes")
    return data.reshape(dims)


def _check_pair(name: str, split: str, x: np.ndarray, y: np.ndarray, paths) -> None:
    """Images [N, H, W] with 8-bit pixels and labels [N] in 0..9, the same N > 0."""
    img, lab = paths
    if x.ndim != 3:
        hint = " (are the image and label files swapped?)" if y.ndim == 3 else ""
        raise InputError(
            f"{img}: {name} {split} images must be [N, H, W], got shape {x.shape}{hint}"
        )
    if y.ndim != 1:
        raise InputError(f"{lab}: {name} {split} labels must be [N], got shape {y.shape}")
    if len(x) == 0:
        raise InputError(f"{img}: {name} {split} split has no items")
    if len(x) != len(y):
        raise InputError(f"{name} {split}: {len(x)} images in {img} but {len(y)} labels in {lab}")
    if y.max() >= 10:
        raise InputError(
            f"{lab}: {name} {split} labels out of range: found up to {int(y.max())}, expected 0..9"
        )
    if x.max() < 16:
        raise InputError(
            f"{img}: {name} {split} pixels only reach {int(x.max())}; expected 8-bit "
            "grey levels 0..255 (already scaled images?)"
        )


def _find_idx(root: Path, stem: str) -> Path:
    for name in (
        stem + ".gz",
        stem,
        stem.replace("-idx", ".idx") + ".gz",
        stem.replace("-idx", ".idx"),
    ):
        if (root / name).exists():
            return root / name
    raise InputError(f"missing {stem}.gz in {root}")


def _idx_root(name: str, root: str | Path) -> Path:
    """Accept the folder itself, a parent with mnist/ or fashion-mnist/, or torchvision's layout."""
    root = Path(root)
    ours, tv = _SUBDIR[name]
    for cand in (root, root / "raw", root / ours, root / tv / "raw", root / tv):
        if (cand / (_IDX["test"][1] + ".gz")).exists() or (cand / _IDX["test"][1]).exists():
            return cand
    raise InputError(f"no {name} idx files under {root} (looked in ., raw/, {ours}/, {tv}/raw/)")


def load_idx_dataset(name: str, root: str | Path | None = None) -> DataBundle:
    """MNIST or Fashion-MNIST from the official idx files, normalised with the train mean/std."""
    if name not in _SUBDIR:
        raise InputError(f"unknown idx data set {name!r}; known: {sorted(_SUBDIR)}")
    root = root or os.environ.get(DATA_ENV)
    if root is None:
        raise InputError(f"{name} needs a data directory: pass one or set {DATA_ENV}")
    base = _idx_root(name, root)
    splits = {}
    for split, (img, lab) in _IDX.items():
        paths = (_find_idx(base, img), _find_idx(base, lab))
        x, y = (read_idx(p) for p in paths)
        _check_pair(name, split, x, y, paths)
        splits[split] = (
            torch.from_numpy(x.copy()).float().div_(255).unsqueeze(1),
            torch.from_numpy(y.astype(np.int64)),
        )
    mean, std = splits["train"][0].mean().item(), splits["train"][0].std().item()
    train, test = (Split(_normalise(x, mean, std), y) for x, y in splits.values())
    names = FASHION_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10))
    return DataBundle(name, train, test, 10, names)


def load_dataset(spec: str, root: str | Path | None = None) -> DataBundle:
    """``digits``, ``mnist`` or ``fashion-mnist`` (``name:PATH`` also accepted), or a path: a
    ``.safetensors``/``.npz`` file of tensors, or a local Hugging Face data set (see files.py)."""
    name, _, path = spec.partition(":")
    if name == "digits":
        return load_digits()
    if name in _SUBDIR:
        return load_idx_dataset(name, path or root)
    file = Path(spec)
    if file.suffix in files.TENSOR_SUFFIXES:
        train, test, k = files.load_tensor_file(file)
    elif file.exists():
        train, test, k = files.load_hf_dataset(file)
    else:
        raise InputError(
            f"unknown data set {spec!r}: not digits, mnist or fashion-mnist, and no "
            "such file or folder"
        )
    return DataBundle(file.stem, train, test, k, tuple(str(i) for i in range(k)))
