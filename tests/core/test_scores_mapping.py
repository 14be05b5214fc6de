"""Scores is a read-only mapping {layer path: 1-D tensor} (issue 23): dict-like reading, no
mutation, the constructor as before (positional or ``values=``), save / load unchanged."""

import collections.abc
import copy
import pickle

import pytest
import torch

import pluginedit as pe
from pluginedit.core.errors import InputError


@pytest.fixture
def scores():
    return pe.Scores(
        {"features.0": torch.tensor([0.3, 0.1, 0.2]), "features.3": torch.arange(4.0)},
        "mine",
        {"p": 1},
        meta={"samples": 8},
    )


def test_reads_like_a_dict(scores):
    assert isinstance(scores, collections.abc.Mapping)
    assert len(scores) == 2 and list(scores) == ["features.0", "features.3"]
    assert list(scores.keys()) == ["features.0", "features.3"]
    assert "features.0" in scores and "nope" not in scores
    assert scores.get("nope") is None and torch.equal(scores.get("features.3"), torch.arange(4.0))
    items = dict(scores.items())
    assert torch.equal(items["features.0"], torch.tensor([0.3, 0.1, 0.2]))
    assert [len(v) for v in scores.values()] == [3, 4]
    assert set(dict(scores)) == {"features.0", "features.3"}
    assert scores.lowest("features.0", 2).tolist() == [1, 2]
    assert (scores.scorer, scores.options, scores.meta) == ("mine", {"p": 1}, {"samples": 8})


def test_constructor_keeps_its_signature():
    a = pe.Scores({"0": torch.ones(2)}, "l1")
    b = pe.Scores(values={"0": torch.ones(2)}, scorer="l1")
    assert a == b and len(b) == 1 and b.options == {} and b.meta == {}
    c = pe.Scores({"0": torch.ones(2, dtype=torch.float64, requires_grad=True)}, "l1")
    assert c["0"].dtype == torch.float32 and not c["0"].requires_grad


def test_mutation_is_refused(scores):
    with pytest.raises(TypeError):
        scores["features.0"] = torch.zeros(3)
    with pytest.raises(TypeError):
        del scores["features.0"]
    with pytest.raises(AttributeError):
        scores.values = {}
    with pytest.raises(AttributeError):
        scores.update({"x": torch.ones(1)})
    assert len(scores) == 2


def test_bad_values_are_input_errors():
    with pytest.raises(InputError, match="1-D"):
        pe.Scores({"0": torch.ones(2, 2)}, "x")
    with pytest.raises(InputError, match="NaN or Inf"):
        pe.Scores({"0": torch.tensor([1.0, float("inf")])}, "x")
    with pytest.raises(InputError, match="must be a tensor"):
        pe.Scores({"0": [1.0, 2.0]}, "x")


def test_equality_copy_pickle_and_files(scores, tmp_path):
    assert scores == copy.deepcopy(scores) == pickle.loads(pickle.dumps(scores))
    other = pe.Scores(
        {"features.0": torch.tensor([0.3, 0.1, 0.25]), "features.3": torch.arange(4.0)},
        "mine",
        {"p": 1},
        meta={"samples": 8},
    )
    assert scores != other
    scores.save(tmp_path / "run")
    assert pe.Scores.load(tmp_path / "run") == scores
    assert "features.0" in repr(scores) and "mine" in repr(scores)


def test_empty_scores_are_falsy_but_valid():
    empty = pe.Scores({}, "x")
    assert len(empty) == 0 and not empty and list(empty.items()) == []
