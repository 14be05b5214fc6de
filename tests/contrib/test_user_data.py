"""The user's own data: tensor files, a Hugging Face image folder and a save_to_disk data set
(offline), and text files for transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pluginedit.contrib import data, files
from pluginedit.core.errors import InputError

datasets = pytest.importorskip("datasets")
PIL = pytest.importorskip("PIL.Image")


def test_tensor_file_with_and_without_test_arrays(tmp_path):
    x, y = torch.randn(50, 1, 6, 6), torch.arange(50) % 5
    save_file({"x": x, "y": y}, str(tmp_path / "a.safetensors"))
    b = data.load_dataset(str(tmp_path / "a.safetensors"))
    assert (len(b.train), len(b.test), b.num_classes) == (40, 10, 5)
    assert torch.equal(torch.cat([b.train.x, b.test.x]).sort(0).values, x.sort(0).values)
    np.savez(
        tmp_path / "b.npz", x=x.numpy(), y=y.numpy(), x_test=x[:7].numpy(), y_test=y[:7].numpy()
    )
    b = data.load_dataset(str(tmp_path / "b.npz"))
    assert (len(b.train), len(b.test)) == (50, 7) and torch.equal(b.test.x, x[:7])


def _image_folder(root, n=6, size=10):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            PIL.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
                root / label / f"{i}.png"
            )


def test_image_folder_and_save_to_disk(tmp_path):
    _image_folder(tmp_path / "imgs")
    b = data.load_dataset(str(tmp_path / "imgs"))
    assert b.train.x.shape[1:] == (1, 10, 10) and b.num_classes == 2
    assert len(b.train) + len(b.test) == 12 and float(b.train.x.max()) <= 1.0
    ds = datasets.Dataset.from_dict({"x": np.random.rand(8, 1, 4, 4).tolist(), "label": [0, 1] * 4})
    ds.save_to_disk(str(tmp_path / "disk"))
    b = data.load_dataset(str(tmp_path / "disk"))
    assert b.train.x.shape[1:] == (1, 4, 4) and len(b.train) + len(b.test) == 8


def test_text_file_tokenised_for_a_transformer(tmp_path):
    class Tok:  # the shape of a transformers tokenizer's call
        def __call__(self, texts, **kw):
            ids = torch.tensor([[1 + len(t) % 7, 2, 0] for t in texts])
            return {"input_ids": ids, "attention_mask": (ids > 0).long()}

    f = tmp_path / "t.jsonl"
    f.write_text(
        "".join(json.dumps({"text": f"sentence {i}", "label": i % 3}) + "\n" for i in range(10))
    )
    train, test, k = files.load_text_dataset(f, Tok())
    assert (
        k == 3 and set(train.x) == {"input_ids", "attention_mask"} and len(train) + len(test) == 10
    )
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(InputError, match="'text' column"):
        files.load_text_dataset(tmp_path / "bad.jsonl", Tok())


def test_unreadable_sources_name_the_file(tmp_path):
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(InputError, match="notes.xyz"):
        data.load_dataset(str(tmp_path / "notes.xyz"))
    with pytest.raises(InputError, match="no such file"):
        data.load_dataset(str(tmp_path / "missing.safetensors").replace(".safetensors", ".nothing"))
