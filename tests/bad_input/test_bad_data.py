"""Bad data directories and files: each a clear InputError naming the file, exit status 2 from
the CLI, never a raw traceback; and a training cache that never serves a model trained on other
data."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pluginedit import cli
from pluginedit.contrib import data, train
from pluginedit.core.errors import InputError

NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx(array: np.ndarray) -> bytes:
    return (
        bytes([0, 0, 8, array.ndim])
        + struct.pack(">" + "I" * array.ndim, *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def _write(folder: Path, n=(40, 20), size=28, labels=None, images=None) -> Path:
    """A small, valid MNIST-layout folder; ``labels`` / ``images`` override one split's arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for (split, (img, lab)), count in zip(NAMES.items(), n):
        x = rng.integers(0, 256, (count, size, size))
        y = np.arange(count) % 10
        x = images.get(split, x) if images else x
        y = labels.get(split, y) if labels else y
        (folder / f"{img}.gz").write_bytes(gzip.compress(_idx(np.asarray(x))))
        (folder / f"{lab}.gz").write_bytes(gzip.compress(_idx(np.asarray(y))))
    return folder


def _damage(folder: Path, case: str) -> str:
    train_img = folder / "train-images-idx3-ubyte.gz"
    if case == "truncated_gzip":
        train_img.write_bytes(train_img.read_bytes()[:-40])
        return "not a readable gzip file"
    if case == "not_gzip":
        train_img.write_bytes(b"this is plain text, not gzip at all")
        return "not a readable gzip file"
    if case == "one_dim_images":
        _write(folder, images={"train": np.zeros(40 * 28 * 28) + 200})
        return r"images must be \[N, H, W\]"
    if case == "train_labels_out_of_range":
        _write(folder, labels={"train": np.full(40, 12)})
        return "train labels out of range"
    if case == "swapped":
        lab = folder / "train-labels-idx1-ubyte.gz"
        tmp = folder / "tmp"
        shutil.move(train_img, tmp), shutil.move(lab, train_img), shutil.move(tmp, lab)
        return "swapped"
    if case == "zero_items":
        _write(folder, n=(0, 20))
        return "has no items"
    if case == "pixel_range":
        _write(folder, images={"train": np.random.default_rng(1).integers(0, 2, (40, 28, 28))})
        return "pixels only reach 1"
    if case == "bad_magic":
        train_img.write_bytes(gzip.compress(b"\x01\x02\x08\x03" + b"\x00" * 64))
        return "bad magic"
    raise AssertionError(case)


CASES = [
    "truncated_gzip",
    "not_gzip",
    "one_dim_images",
    "train_labels_out_of_range",
    "swapped",
    "zero_items",
    "pixel_range",
    "bad_magic",
]


@pytest.mark.parametrize("case", CASES)
def test_damaged_idx_folder_is_a_clear_error(tmp_path, case):
    folder = _write(tmp_path / "mnist")
    match = _damage(folder, case)
    with pytest.raises(InputError, match=match) as e:
        data.load_dataset("mnist", tmp_path)
    assert "mnist" in str(e.value)


@pytest.mark.parametrize("case", ["truncated_gzip", "swapped", "zero_items"])
def test_cli_exits_2_on_damaged_data(tmp_path, case, capsys):
    folder = _write(tmp_path / "mnist")
    _damage(folder, case)
    assert cli.main(["train", "--data", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert "pluginedit: error:" in capsys.readouterr().err


def test_valid_small_folder_loads(tmp_path):
    bundle = data.load_dataset("mnist", _write(tmp_path / "mnist").parent)
    assert bundle.train.x.shape == (40, 1, 28, 28) and len(bundle.test) == 20


@pytest.mark.parametrize(
    "content,match",
    [
        ({"x": torch.randn(10, 1, 8, 8)}, r"missing array\(s\) \['y'\]"),
        ({"x": torch.randn(10, 1, 8, 8), "y": torch.rand(10)}, "1-D integer"),
        ({"x": torch.randn(10, 1, 8, 8), "y": torch.arange(9)}, "do not match 9 labels"),
        ({"x": torch.full((10, 1, 8, 8), float("nan")), "y": torch.arange(10)}, "NaN"),
    ],
)
def test_tensor_files_are_checked(tmp_path, content, match):
    f = tmp_path / "d.safetensors"
    save_file(content, str(f))
    with pytest.raises(InputError, match=match):
        data.load_dataset(str(f))


def test_truncated_tensor_file_and_npz_with_objects(tmp_path):
    f = tmp_path / "d.safetensors"
    save_file({"x": torch.randn(10, 1, 8, 8), "y": torch.arange(10)}, str(f))
    f.write_bytes(f.read_bytes()[:-30])
    with pytest.raises(InputError, match="not a readable safetensors"):
        data.load_dataset(str(f))
    g = tmp_path / "d.npz"
    np.savez(g, x=np.array([{"a": 1}], dtype=object), y=np.arange(1))
    with pytest.raises(InputError, match="without pickled objects"):
        data.load_dataset(str(g))


@pytest.mark.slow
def test_cache_never_serves_a_model_trained_on_other_data(tmp_path, monkeypatch):
    """Two data folders of the same name and size: two cache entries, two models."""
    monkeypatch.setenv("PLUGINEDIT_CACHE", str(tmp_path / "cache"))
    a = data.load_dataset("mnist", _write(tmp_path / "a" / "mnist").parent)
    rng = np.random.default_rng(5)
    b_dir = _write(tmp_path / "b" / "mnist", images={"train": rng.integers(0, 256, (40, 28, 28))})
    b = data.load_dataset("mnist", b_dir.parent)
    assert a.name == b.name and len(a.train) == len(b.train)
    cfg = {"widths": (4,), "hidden": 8}
    ma = train.pretrained("vgg", a, epochs=1, config=cfg)
    mb = train.pretrained("vgg", b, epochs=1, config=cfg)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    assert any(
        not torch.equal(p, q) for p, q in zip(ma.state_dict().values(), mb.state_dict().values())
    )
