"""Shared fixtures. Without a GPU, TRITON_INTERPRET=1 is set before triton or any kernel module is
imported, so the Triton kernels run on the CPU through the interpreter; with one it stays unset,
so the gpu-marked tests run the compiled kernels (triton reads it once, process-wide)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("PLUGINEDIT_DISABLE_PLUGIN_AUTOLOAD", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pluginedit.contrib import data, train  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "fashion-mnist").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def digits():
    return data.load_digits()


@pytest.fixture(scope="session")
def digits_vgg(digits):
    """The demo's trained digits VGG (cached under the user cache dir). Copy before editing."""
    return train.pretrained("vgg", digits)


@pytest.fixture(scope="session")
def fmnist(shared_data):
    return data.load_dataset("fashion-mnist", shared_data)


FMNIST_RECIPE = ["--train-samples", "12000", "--epochs", "2"]  # the same recipe from the CLI


def _fmnist_model(arch, fmnist):
    # A 12k-sample, 2-epoch recipe: about 87% test accuracy in well under a minute on 2 cores.
    small = data.DataBundle(
        fmnist.name, fmnist.train.subset(12000), fmnist.test, fmnist.num_classes, fmnist.class_names
    )
    return train.pretrained(arch, small, epochs=2)


@pytest.fixture(scope="session")
def fmnist_resnet(fmnist):
    return _fmnist_model("resnet", fmnist)


@pytest.fixture(scope="session")
def fmnist_vgg(fmnist):
    return _fmnist_model("vgg", fmnist)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Fixtures that train a model on first use (cached after): every test using one is slow, so
# `pytest -m "not slow"` runs without training anything. Tests that train inline carry the mark.
TRAINING_FIXTURES = {"digits_vgg", "fmnist_vgg", "fmnist_resnet", "trojan", "cached"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
