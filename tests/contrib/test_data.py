"""Data loaders (real files, both layouts, bad files) and deterministic training."""

import gzip

import pytest
import torch

from pluginedit.contrib import data, train, zoo
from pluginedit.core.errors import InputError


def test_fashion_mnist_idx_files(fmnist):
    assert fmnist.train.x.shape == (60000, 1, 28, 28) and fmnist.test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(fmnist.test.y).tolist() == [1000] * 10
    assert abs(fmnist.train.x.mean().item()) < 1e-4 and abs(fmnist.train.x.std().item() - 1) < 1e-3


def test_mnist_in_torchvision_raw_layout(shared_data, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "mnist").iterdir():
        (raw / f.name).symlink_to(f)
    bundle = data.load_dataset("mnist", tmp_path)
    assert torch.bincount(bundle.test.y).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]


def test_bad_idx_files_are_named(tmp_path):
    with pytest.raises(InputError, match="no mnist idx files"):
        data.load_dataset("mnist", tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(InputError, match="not an idx file"):
        data.read_idx(bad)
    with pytest.raises(InputError, match="unknown data set 'cifar'"):
        data.load_dataset("cifar")


def test_digits_split_is_stratified_and_seeded():
    a, b = data.load_digits(), data.load_digits()
    assert torch.equal(a.test.y, b.test.y) and len(a.train) + len(a.test) == 1797
    assert torch.bincount(a.test.y).min() >= 43


@pytest.mark.slow
def test_training_is_deterministic(digits):
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = zoo.build("vgg", 1, 10, **zoo.default_config("vgg", "digits"))
        runs.append(train.fit(model, digits.train, epochs=1, max_steps=5, seed=3).state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_as_loader_rejects_mismatched_tensors():
    with pytest.raises(InputError, match="3 inputs but 2 labels"):
        data.as_loader((torch.zeros(3, 1), torch.zeros(2, dtype=torch.long)))
