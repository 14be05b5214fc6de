"""Issue 22, what scoring and editing do not own stays as it was: the gradients a user has
accumulated, buffers a forward updates, every module's training flag after a successful edit;
and targets an editor is given are checked, not silently replaced by the default layers."""

from __future__ import annotations

import pytest
import torch
from _bad_input_helpers import Untouched, X, Y, tiny
from torch import nn

import pluginedit as pe
from pluginedit.core.components import modes_kept
from pluginedit.core.errors import InputError

SCORERS = ["l1", "witness", "fidelity", "taylor", "tvs"]


# --- gradients ---------------------------------------------------------------------------


def _with_grads(model: nn.Module) -> dict:
    """Give every parameter but one a gradient; returns {name: its values, or None}."""
    for i, p in enumerate(model.parameters()):
        p.grad = None if i == 1 else torch.full_like(p, 0.5 + i)
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("several", [False, True])
def test_taylor_leaves_the_users_gradients_as_they_were(several):
    model = tiny()
    grads = _with_grads(model)
    if several:
        pe.score_many(model, ["taylor", "witness"], data=(X, Y))
    else:
        pe.score(model, "taylor", data=(X, Y))
    for name, p in model.named_parameters():
        if grads[name] is None:
            assert p.grad is None, f"{name}: None became a gradient"
        else:
            assert p.grad is not None and torch.equal(p.grad, grads[name]), (
                f"{name}: gradient changed"
            )


def test_taylor_without_gradients_leaves_none():
    model = tiny()
    pe.score(model, "taylor", data=(X, Y))
    assert all(p.grad is None for p in model.parameters())


# --- buffers a forward updates ----------------------------------------------------------


class Counting(nn.Module):
    """tiny() with two call counters: one updated in place, one replaced by a new tensor."""

    def __init__(self):
        super().__init__()
        self.net = tiny()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        self.seen = self.seen + len(x)
        return self.net(x)


@pytest.mark.parametrize("scorer", SCORERS)
def test_scoring_puts_back_buffers_a_forward_updates(scorer):
    model = Counting()
    calls, seen = model.calls, model.seen
    untouched = Untouched(model)
    pe.score(model, scorer, data=(X, Y))
    untouched.check()
    assert model.calls is calls and model.seen is seen  # the same objects, not copies
    assert int(model.calls) == 0 and float(model.seen) == 0


def test_score_many_puts_back_buffers_and_train_mode_batchnorm():
    model = Counting().train()
    untouched = Untouched(model)
    pe.score_many(model, SCORERS, data=(X, Y))
    assert not untouched.problems(), untouched.problems()


# --- training flags after a successful edit ---------------------------------------------


def _mixed_modes() -> nn.Module:
    model = tiny().train()
    model[1].eval()  # BN frozen, the rest training: each flag must come back
    return model


def _modes(model: nn.Module) -> dict[str, bool]:
    return {path: m.training for path, m in model.named_modules()}


@pytest.mark.parametrize(
    "call",
    [
        lambda m: pe.edit(
            m, "prune", pe.score(m, "l1", example_inputs=X[:2]), example_inputs=X[:2], ratio=0.5
        ),
        lambda m: pe.edit(
            m, "mask", pe.score(m, "l1", example_inputs=X[:2]), example_inputs=X[:2], ratio=0.5
        ),
        lambda m: pe.edit(m, "modhifi-p", data=(X, Y), ratio=0.5),
        lambda m: pe.prune(m, "l1", ratio=0.5, example_inputs=X[:2]),
        lambda m: pe.forget(m, 1, (X, Y)),
    ],
    ids=["edit-prune", "edit-mask", "edit-modhifi-p", "prune", "forget"],
)
def test_a_successful_edit_keeps_every_training_flag(call):
    model = _mixed_modes()
    before = _modes(model)
    call(model)
    after = _modes(model)
    assert {p: after[p] for p in before if p in after} == {
        p: before[p] for p in before if p in after
    }


def test_modules_an_edit_adds_take_their_parents_mode():
    model = _mixed_modes()
    with modes_kept(model):
        model.eval()
        model.add_module("extra", nn.Sequential(nn.Linear(2, 2)).eval())
        model._modules.pop("2")  # a removed module is simply gone
    assert model.training and model.extra.training and model.extra[0].training
    assert not model.get_submodule("1").training  # the frozen BN stays frozen


# --- targets given to an editor ---------------------------------------------------------


@pytest.mark.parametrize("editor", ["mask", "prune"])
def test_unknown_editor_targets_are_named_and_the_model_untouched(editor):
    model = tiny()
    scores = pe.score(model, "l1", example_inputs=X[:2])
    untouched = Untouched(model)
    with pytest.raises(
        InputError, match=r"targets \['nope'\] are not conv/linear layers .* known: \['0', '5'\]"
    ):
        pe.edit(model, editor, scores, example_inputs=X[:2], targets=["nope"], ratio=0.5)
    untouched.check()


def test_mask_masks_only_its_targets():
    model = tiny()
    scores = pe.score(model, "l1", targets=["0", "5"], num_classes=4)
    record = pe.edit(model, "mask", scores, targets=["0"], ratio=0.5)
    assert set(record.changes) == {"0"}


def test_mask_targets_without_scores_and_unknown_indices_are_named():
    model = tiny()
    untouched = Untouched(model)
    with pytest.raises(InputError, match=r"mask: targets \['5'\] have no scores"):
        pe.edit(
            model, "mask", pe.score(model, "l1", example_inputs=X[:2]), targets=["5"], ratio=0.5
        )
    with pytest.raises(InputError, match=r"mask indices \['nope'\] are not conv/linear layers"):
        pe.edit(model, "mask", None, indices={"nope": [1]})
    with pytest.raises(InputError, match="with indices, name the layers there"):
        pe.edit(model, "mask", None, indices={"0": [1]}, targets=["0"])
    untouched.check()


def test_an_edit_keeps_the_users_gradients():
    """Editors that run backward (fine-tuning, rectification) must not touch the user's .grad;
    after a pruning edit, surviving parameters keep theirs and resized ones have none."""
    model = tiny()
    model(X).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    pe.edit(
        model, "mask", pe.score(model, "l1", example_inputs=X[:1]), example_inputs=X[:1], ratio=0.5
    )
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    pe.edit(
        model, "prune", pe.score(model, "l1", example_inputs=X[:1]), example_inputs=X[:1], ratio=0.5
    )
    for n, p in model.named_parameters():
        assert p.grad is None or (p.grad.shape == p.shape and torch.equal(p.grad, grads[n]))
    assert model[5].weight.grad is None  # the head lost input columns: no stale gradient


def test_an_options_object_given_as_the_editor_says_what_to_do():
    from pluginedit.editors.prune import PruneEditor

    with pytest.raises(InputError, match="an options object is not an editor"):
        pe.edit(tiny(), PruneEditor.Options(), example_inputs=X[:1])
