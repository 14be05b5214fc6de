"""ModHiFi-P on a trained ``transformers`` family (issue 24, item 5;
``benchmarks/trained_families.py`` runs every family against Torch-Pruning's criteria)."""

import copy

import pytest
import torch

import pluginedit as pe
from pluginedit.contrib import data, families
from pluginedit.core.errors import InputError
from pluginedit.editors.common.bnrecal import recalibrate_bn


def _accuracy(model, split) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x).logits.argmax(1) for x in split.x.split(500)])
    return float((pred == split.y).float().mean())


def test_unknown_family_and_wrong_images_are_refused():
    with pytest.raises(InputError, match="unknown family"):
        families.build("alexnet")
    digits = data.load_digits()  # 8 x 8 images: refused before any training
    with pytest.raises(InputError, match="28 x 28"):
        families.trained("resnet", digits)


@pytest.mark.slow
def test_modhifi_p_beats_magnitude_on_trained_resnet_family(fmnist):
    """The ResNet family trained on Fashion-MNIST (cached after the first run, about 1.5 min
    to train): at 50 % of channels without fine-tuning, modhifi-p keeps most of the dense
    accuracy, far above L1 magnitude + prune + BN recalibration at the same parameter count."""
    model = families.trained("resnet", fmnist)
    calib = fmnist.train.subset(1024, seed=100)
    test = fmnist.test.subset(2000, seed=0)
    dense = _accuracy(model, test)
    assert dense > 0.85

    ours = copy.deepcopy(model)
    pe.edit(ours, "modhifi-p", data=calib, ratio=0.5, calib_samples=1024)
    base = copy.deepcopy(model)
    scores = pe.score(base, "l1", example_inputs=calib.x[:1])
    pe.edit(base, "prune", scores, ratio=0.5, example_inputs=calib.x[:1])
    recalibrate_bn(base, calib)

    n = [sum(p.numel() for p in m.parameters()) for m in (ours, base, model)]
    assert n[0] == n[1] < 0.5 * n[2]  # the same channels count removed, most parameters gone
    acc, acc_base = _accuracy(ours, test), _accuracy(base, test)
    assert acc > acc_base + 0.2
    assert acc > 0.8 * dense
