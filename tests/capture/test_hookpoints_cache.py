"""Hook points: one trace per model serves every layer, and a model whose structure changes is
traced again (a cached chain must not point at a replaced module)."""

import pytest
from torch import nn

from pluginedit.capture.hookpoints import _CHAINS, resolve
from pluginedit.core.errors import InputError


def net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
    )


def test_resolved_points_follow_the_model_structure():
    model = net()
    assert resolve(model, "0", "bn") == ("1", "output")
    assert resolve(model, "0", "act") == ("2", "output")
    assert resolve(model, "3", "bn") == ("4", "output")
    assert model in _CHAINS  # traced once for all three
    model[1] = nn.Identity()  # the BN after the first conv is gone
    with pytest.raises(InputError, match="no 'bn' hook point"):
        resolve(model, "0", "bn")
    assert resolve(model, "0", "act") == ("2", "output")
