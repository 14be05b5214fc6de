"""The user's own data: a ``.safetensors`` / ``.npz`` file of tensors, or a local Hugging Face
``datasets`` source (a ``save_to_disk`` folder, an ``imagefolder`` tree, ``json``/``csv`` files),
read offline. Each failure names the file and the problem."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..capture import Split
from ..core import checks
from ..core.batches import take_rows
from ..core.errors import InputError

TENSOR_SUFFIXES = (".safetensors", ".npz")


def _arrays(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz file without pickled objects ({e})") from e


def _labels(y: torch.Tensor, path: Path, name: str) -> torch.Tensor:
    """``y`` as int64 class indices, checked before anything is sized by the largest label.
    Whole numbers stored as floats (NumPy and pandas often do) are taken exactly."""
    problem = checks.label_problem(y, whole_floats=True)
    if problem:
        raise InputError(f"{path}: {name} labels {problem}")
    return y.long()


def _split(x: torch.Tensor, y: torch.Tensor, path: Path, name: str) -> Split:
    """Inputs as float32 (what every loader hands out and the zoo models compute in: float64,
    float16 and integer arrays alike) with their labels, checked."""
    if x.is_complex():
        raise InputError(
            f"{path}: {name} inputs are complex-valued ({x.dtype}); pass real arrays "
            "(magnitudes, or real and imaginary parts as channels)"
        )
    y = _labels(y, path, name)
    if x.ndim < 2:
        raise InputError(
            f"{path}: {name} inputs of shape {tuple(x.shape)} have no feature dimension: "
            "inputs need a sample dimension plus feature dimensions, [N, features...] "
            "(for one value per sample, shape [N, 1])"
        )
    if len(x) != len(y):
        raise InputError(f"{path}: {name} inputs {tuple(x.shape)} do not match {len(y)} labels")
    if len(y) == 0:
        raise InputError(f"{path}: {name} has no samples")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError(f"{path}: {name} inputs contain NaN or Inf")
    return Split(x, y)


def _holdout(data: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, test): a seeded ``fraction`` of the samples held out, order kept."""
    checks.number("test_fraction", fraction, above=0, below=1)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(checks.seed(seed)))
    cut = max(1, int(round(len(data) * fraction)))
    test, train = (
        Split(take_rows(data.x, i), data.y[i])
        for i in (order[:cut].sort().values, order[cut:].sort().values)
    )
    return train, test


def load_tensor_file(path: str | Path, test_fraction: float = 0.2, seed: int = 0):
    """(train, test, num_classes) from arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``;
    without test arrays a seeded ``test_fraction`` of the samples is held out."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"data file {path} is a directory, not a .safetensors / .npz file")
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    arrays = _arrays(path)
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise InputError(f"{path}: missing array(s) {sorted(missing)}; found {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        given, absent = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise InputError(
            f"{path}: {given} without {absent}; give both test arrays, or neither (then "
            f"{test_fraction:.0%} of x/y is held out)"
        )
    data = _split(arrays["x"], arrays["y"], path, "x/y")
    if "x_test" in arrays:
        train, test = data, _split(arrays["x_test"], arrays["y_test"], path, "x_test/y_test")
    else:
        train, test = _holdout(data, test_fraction, seed)
    classes = int(max(train.y.max(), test.y.max())) + 1 if len(train) else 0
    return train, test, classes


def _hf_source(path: Path):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError as e:
        raise InputError("reading a Hugging Face data set needs `pip install datasets`") from e
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        raise InputError(
            f"data set folder {path} is empty: expected a `save_to_disk` folder or an image "
            "folder (one subfolder of images per class)"
        )
    kind = {".json": "json", ".jsonl": "json", ".csv": "csv"}.get(path.suffix)
    if not path.is_dir() and kind is None:
        raise InputError(
            f"{path}: not a data set pluginedit can read (.safetensors, .npz, a "
            "datasets folder, an image folder, .json/.jsonl/.csv)"
        )
    try:
        if path.is_dir() and (
            (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()
        ):
            return datasets.load_from_disk(str(path))
        if path.is_dir():
            return datasets.load_dataset("imagefolder", data_dir=str(path))
        return datasets.load_dataset(kind, data_files=str(path))
    except Exception as e:  # datasets' own errors (no data files, damaged arrow files, ...)
        raise InputError(
            f"{path}: not a data set `datasets` can read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''})"
        ) from e


def _to_split(ds, path: Path, name: str, image_size: int | None) -> Split:
    cols = ds.column_names
    label = next((c for c in ("label", "labels", "y") if c in cols), None)
    feature = next((c for c in ("image", "img", "pixel_values", "x") if c in cols), None)
    if label is None or feature is None:
        raise InputError(
            f"{path} ({name}): need an image/x column and a label column, found {cols}"
        )
    if len(ds) == 0:
        raise InputError(f"{path} ({name}): the split has no samples")
    xs = []
    for item in ds[feature]:
        a = np.asarray(
            item.convert("L").resize((image_size,) * 2)
            if image_size and hasattr(item, "convert")
            else (item.convert("L") if hasattr(item, "convert") else item),
            dtype=np.float32,
        )
        xs.append(a)
    try:
        x = torch.from_numpy(np.stack(xs))
    except ValueError as e:
        raise InputError(
            f"{path} ({name}): samples of different shapes; pass image_size ({e})"
        ) from e
    x = x.unsqueeze(1) / 255.0 if x.ndim == 3 else x
    return _split(x, torch.as_tensor(ds[label]), path, name)


def load_hf_dataset(
    path: str | Path, image_size: int | None = None, test_fraction: float = 0.2, seed: int = 0
):
    """(train, test, num_classes) from a local Hugging Face data set of images (grey scale,
    scaled to [0, 1]) with integer labels."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"data set {path} does not exist")
    source = _hf_source(path)
    splits = dict(source) if hasattr(source, "keys") else {"train": source}
    if "train" not in splits:
        raise InputError(f"{path}: no 'train' split (found {sorted(splits)})")
    train = _to_split(splits["train"], path, "train", image_size)
    test_ds = splits.get("test") or splits.get("validation")
    if test_ds is not None:
        test = _to_split(test_ds, path, "test", image_size)
    else:
        train, test = _holdout(train, test_fraction, seed)
    return train, test, int(max(train.y.max(), test.y.max())) + 1


def load_text_dataset(
    path: str | Path, tokenizer, max_length: int = 128, test_fraction: float = 0.2, seed: int = 0
):
    """(train, test, num_classes) from a local ``.json``/``.jsonl``/``.csv`` file or
    ``save_to_disk`` folder with a ``text`` (or ``sentence``) column and an optional integer
    ``label`` column, tokenised with ``tokenizer`` into dict inputs."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"data set {path} does not exist")
    if path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        rows = {"text": lines}
    else:
        source = _hf_source(path)
        ds = source["train"] if hasattr(source, "keys") else source
        rows = ds.to_dict()
    column = next((c for c in ("text", "sentence", "sentences") if c in rows), None)
    if column is None or not rows[column]:
        raise InputError(f"{path}: need a non-empty 'text' column, found {sorted(rows)}")
    enc = tokenizer(
        list(rows[column]),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    x = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    y = (
        torch.as_tensor(rows["label"])
        if "label" in rows
        else torch.zeros(len(rows[column]), dtype=torch.long)
    )
    y = _labels(y, path, "text")
    train, test = _holdout(Split(x, y), test_fraction, seed)
    return train, test, max(2, int(y.max()) + 1)
