"""The façade: the public verbs score, edit, prune and forget. Nothing inside the package imports
this module; the CLI and users do."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .capture import Pairs, check_classes, check_model, checked_inputs, example_batch
from .core import registry
from .core.components import grads_kept, modes_kept
from .core.errors import InputError, PluginRunError
from .core.plugin import Editor, Inputs, failures_named
from .core.record import EditRecord, atomic
from .core.scores import Scores
from .core.spill import SpilledSnapshot
from .io import load, load_model, load_weights, save
from .io.models import add_edit, load_state, remember_source
from .scorers.run import num_classes_of, score, score_many

__all__ = [
    "Pairs",
    "score",
    "score_many",
    "edit",
    "prune",
    "forget",
    "editor_inputs",
    "save",
    "load",
    "load_model",
    "load_weights_into",
]


def load_weights_into(model: nn.Module, weights) -> nn.Module:
    """Load a weights file (.safetensors, or a .pt/.pth state dict without pickle) strictly."""
    load_state(model, load_weights(weights), str(weights))
    return model


def _editor(editor: str | Editor, options: dict) -> Editor:
    if isinstance(editor, Editor):
        if options:
            raise InputError(
                f"options {sorted(options)} given with an editor instance; set them on it"
            )
        return editor
    if not isinstance(editor, str):
        hint = (
            "an options object is not an editor: build the editor with the options as keywords "
            "(ModHiFiP(ratio=0.5)) or pass its name with them "
            "(pe.edit(model, 'modhifi-p', ratio=0.5))"
            if dataclasses.is_dataclass(editor)
            else "pass a name ('modhifi-p') or an Editor instance"
        )
        raise InputError(
            f"editor must be a plugin name or an Editor, got a {type(editor).__name__}; {hint}"
        )
    return registry.get_editor(editor, **options)


def editor_inputs(
    model: nn.Module,
    editor: Editor,
    scores: Scores | None,
    data=None,
    example_inputs=None,
    num_classes=None,
    forget_class=None,
    targets=None,
    pairs=None,
) -> Inputs:
    """Check what ``editor`` declares it needs and assemble its Inputs (float64 inputs converted
    for a float32 model)."""
    check_model(model, "edit")
    if editor.needs_data and data is None:
        raise InputError(f"editor {editor.name!r} needs calibration data (data=...)")
    if editor.needs_pairs and not isinstance(pairs, Pairs):
        raise InputError(
            f"editor {editor.name!r} needs clean / corrupted pairs (pairs=pluginedit.Pairs(...)), "
            f"got {type(pairs).__name__}"
        )
    if pairs is not None and not editor.needs_pairs:
        raise InputError(f"editor {editor.name!r} does not read clean / corrupted pairs")
    if scores is not None and not editor.uses_scores:
        raise InputError(
            f"editor {editor.name!r} computes its own scores and ignores the Scores "
            f"given (from {scores.scorer!r}); pass scores=None"
        )
    if scores is not None:
        if not isinstance(scores, Scores):
            raise InputError(
                f"scores must be a pluginedit.Scores, got {type(scores).__name__} "
                "(wrap a dict with Scores(values, scorer=...))"
            )
        scores.check_fits(model)
    # forgetting needs the forgotten class and one to keep
    need = 2 if editor.kind == "forget" else 1 if editor.needs_labels else 0
    inputs = checked_inputs(model, data, example_inputs, num_classes, need, targets)
    num_classes = inputs.num_classes
    if editor.kind == "forget":
        if (
            forget_class is None
            or isinstance(forget_class, bool)
            or int(forget_class) != forget_class
        ):
            raise InputError(
                f"editor {editor.name!r} needs an integer forget_class, got {forget_class!r}"
            )
        if not 0 <= int(forget_class) < num_classes:
            raise InputError(f"forget_class {forget_class} out of range [0, {num_classes - 1}]")
        forget_class = int(forget_class)
    elif forget_class is not None:
        raise InputError(f"editor {editor.name!r} ({editor.kind}) does not forget a class")
    if pairs is not None:  # the labels index the model's output
        width = num_classes_of(
            model, inputs.example if inputs.example is not None else pairs.clean[:1]
        )
        check_classes(pairs.y, width, need=1)
    return dataclasses.replace(inputs, forget_class=forget_class, pairs=pairs)


def token_inputs(model, editor: Editor, scores, data, forget_class, pairs, unused) -> Inputs:
    """The Inputs of an editor that reads token ids (a decoder LLM editor): it checks the model
    and the ids itself; every input it does not read is refused rather than ignored."""
    check_model(model, "edit")
    if scores is not None:
        raise InputError(f"editor {editor.name!r} computes its own scores; pass scores=None")
    given = {**unused, "forget_class": forget_class, "pairs": pairs}
    extra = sorted(k for k, v in given.items() if v is not None)
    if extra:
        raise InputError(f"editor {editor.name!r} reads token ids only (data=); got {extra}")
    editor.check(model, data)  # type: ignore[attr-defined]  # token editors define it
    return Inputs(data=data)


def edit(
    model: nn.Module,
    editor: str | Editor,
    scores: Scores | None = None,
    *,
    data=None,
    example_inputs=None,
    num_classes=None,
    forget_class=None,
    targets=None,
    pairs=None,
    **options,
) -> EditRecord:
    """Apply an editor atomically: if it raises, the model is restored in place, exactly. If
    it succeeds, every module keeps its training flag (one the editor added takes its parent's).
    Keyword arguments other than the inputs named here are the editor's options.

    The primary form passes an editor built with its options (checked when it is built):
    ``pe.edit(model, ModHiFiP(ratio=0.5), data=calib)`` (``from pluginedit.editors.modhifi_p
    import ModHiFiP``); ``pe.edit(model, "modhifi-p", data=calib, ratio=0.5)`` is the same edit
    by name. ``scores`` reach the editor as given, or ``None``: nothing is scored for it."""
    editor = _editor(editor, options)
    if getattr(editor, "takes_tokens", False):  # token ids (decoder LLMs): the editor checks them
        unused = dict(example_inputs=example_inputs, num_classes=num_classes, targets=targets)
        inputs = token_inputs(model, editor, scores, data, forget_class, pairs, unused)
    else:
        inputs = editor_inputs(
            model, editor, scores, data, example_inputs, num_classes, forget_class, targets, pairs
        )
    remember_source(model)  # a transformers model's dense config, before an editor changes it
    # an editor that walks a large model block by block keeps its undo state on disk
    snap = SpilledSnapshot if getattr(editor, "spills_snapshot", False) else None
    with atomic(model, snap), modes_kept(model), grads_kept(model):
        record = _apply(editor, model, scores, inputs)
    add_edit(model, record)  # steps and history travel with the model (pe.save)
    return record


def _nonfinite(model: nn.Module) -> set[str]:
    return {
        k
        for k, t in model.state_dict(keep_vars=True).items()
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all())
    }


def _apply(editor: Editor, model: nn.Module, scores, inputs: Inputs) -> EditRecord:
    """Run the editor (inside ``atomic``): its own exceptions, a missing record and NaN / Inf
    it wrote into the weights are errors naming it, and the model is restored."""
    before = _nonfinite(model)
    with failures_named(f"editor {editor.name!r}"):
        record = editor.apply(model, scores, inputs)
    if not isinstance(record, EditRecord):
        raise PluginRunError(
            f"editor {editor.name!r} returned {type(record).__name__}, not an EditRecord"
        )
    bad = sorted(_nonfinite(model) - before)
    if bad:
        raise PluginRunError(
            f"editor {editor.name!r} left NaN or Inf in {bad[:5]}; the model was restored"
        )
    return record


def prune(
    model: nn.Module,
    scores: Scores | str = "l1",
    ratio: float = 0.5,
    example_inputs=None,
    data=None,
    **options,
) -> EditRecord:
    """Score (if given a scorer name) and physically prune ``ratio`` of the channels."""
    example = example_inputs if example_inputs is not None else example_batch(data)
    if isinstance(scores, str):
        scores = score(model, scores, data=data, example_inputs=example)
    return edit(model, "prune", scores, example_inputs=example, ratio=ratio, **options)


def forget(
    model: nn.Module,
    forget_class: int,
    data,
    editor: str | Editor = "discedit-u",
    num_classes: int | None = None,
    **options,
) -> EditRecord:
    """Make ``model`` forget one class by editing the components that carry it."""
    ed = _editor(editor, options)
    if ed.kind != "forget":
        raise InputError(f"editor {ed.name!r} is a {ed.kind} editor, not a forgetting one")
    return edit(model, ed, None, data=data, forget_class=forget_class, num_classes=num_classes)
