"""``graph.probe.runnable_plan``: where torch-pruning's removal leaves a model that no longer runs,
the groups that break the forward are found, kept whole and named, and the rest is pruned; a
model that breaks whatever is pruned, or a search past its time, stops with an EditError and
the model untouched."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import pluginedit as pe
from pluginedit.core.errors import EditError
from pluginedit.core.scores import Scores
from pluginedit.graph import probe
from pluginedit.graph.pruner import prune_by_scores


class HardWidth(nn.Module):
    """``a``'s output is reshaped by a literal width: torch-pruning does not see the constant, so
    removing ``a``'s channels breaks the forward; ``b`` and ``c`` are ordinary."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = y.reshape(y.shape[0], 8, -1).reshape(y.shape[0], 8, *x.shape[2:])
        y = torch.relu(self.c(torch.relu(self.b(y))))
        return self.fc(y.mean((2, 3)))


class Brittle(HardWidth):
    """Runs only with every width it was built with: no removal keeps it running."""

    def forward(self, x):
        widths = (self.a.out_channels, self.b.out_channels, self.c.out_channels)
        if widths != (8, 16, 16):
            raise RuntimeError(f"widths {widths}")
        return super().forward(x)


def _scores(model) -> Scores:
    g = torch.Generator().manual_seed(0)
    return Scores({p: torch.rand(getattr(model, p).out_channels, generator=g) for p in "abc"}, "r")


def _x(n=2):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_the_group_that_breaks_the_forward_is_kept_whole_and_the_rest_pruned():
    torch.manual_seed(0)
    model, x = HardWidth(), _x()
    scores = _scores(model)
    kept, _ = probe.runnable_plan(model, x, scores, 0.5, {"fc"})
    assert list(kept) == ["a"] and "invalid for input of size" in kept["a"]
    assert model.a.out_channels == 8 and model.b.out_channels == 16  # planned on a copy
    prune_by_scores(model, x, scores, 0.5, {"fc"} | set(kept))
    assert (model.a.out_channels, model.b.out_channels, model.c.out_channels) == (8, 8, 8)
    assert model(x).shape == (2, 10)


def test_modhifi_p_prunes_around_the_misread_group_and_names_it():
    torch.manual_seed(0)
    model, x = HardWidth(), _x(64)
    with pytest.warns(UserWarning, match=r"1 group\(s\) kept whole.*'a'"):
        rec = pe.edit(model, "modhifi-p", data=(x, torch.zeros(64, dtype=torch.long)), ratio=0.5)
    assert list(rec.info["kept_whole"]) == ["a"]
    assert (model.a.out_channels, model.b.out_channels, model.c.out_channels) == (8, 8, 8)
    assert model(x).shape == (64, 10)


def test_a_model_no_removal_keeps_running_stops_with_the_model_untouched():
    torch.manual_seed(0)
    model, x = Brittle(), _x(32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(EditError, match="removed no channel"):
            pe.edit(model, "modhifi-p", data=(x, torch.zeros(32, dtype=torch.long)), ratio=0.5)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    kept, _ = probe.runnable_plan(model, x[:2], _scores(model), 0.5, {"fc"})
    assert sorted(kept) == ["a", "b", "c"] and all("widths" in w for w in kept.values())


def test_the_search_stops_on_its_time_budget(monkeypatch):
    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.0)
    model, x = HardWidth(), _x()
    with pytest.raises(EditError, match=r"no longer runs and 0 s did not find the groups"):
        probe.runnable_plan(model, x, _scores(model), 0.5, {"fc"})
