"""The public verbs: score, edit, prune. Everything else is reachable but not needed."""
from __future__ import annotations

import torch
from torch import nn

from .core import registry
from .capture import collect
from .core.components import groups, output_layers
from .capture import Split, check_classes
from .core.errors import InputError
from .core.plugin import Editor, Scorer
from .core.record import EditRecord, atomic
from .core.scores import Scores


def default_targets(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Every conv / linear layer except the classifier head."""
    heads = set(output_layers(model, example)) if example is not None else set()
    return [p for p in groups(model) if p not in heads]


def _example(data) -> torch.Tensor | None:
    if isinstance(data, Split):
        return data.x[:1]
    if isinstance(data, (tuple, list)) and torch.is_tensor(data[0]):
        return data[0][:1]
    if data is not None:
        return next(iter(data))[0][:1]
    return None


def score(model: nn.Module, scorer: str | Scorer = "l1", data=None, targets: list[str] | None = None,
          num_classes: int | None = None, max_samples: int | None = None, batch_size: int = 256,
          progress: bool = False, example_inputs: torch.Tensor | None = None, **options) -> Scores:
    """Score the components of ``targets`` (default: every conv/linear layer but the head)."""
    scorer = registry.get_scorer(scorer, **options) if isinstance(scorer, str) else scorer
    if scorer.needs_data and data is None:
        raise InputError(f"scorer {scorer.name!r} needs data (labelled samples)")
    example = example_inputs if example_inputs is not None else _example(data)
    targets = targets or default_targets(model, example)
    known = groups(model)
    missing = [t for t in targets if t not in known]
    if missing:
        raise InputError(f"targets {missing} are not conv/linear layers of the model; known: {list(known)}")
    if scorer.needs_labels:
        num_classes = num_classes or _num_classes(model, example)
        if isinstance(data, Split):
            check_classes(data.y, num_classes)
    requests = scorer.requests(model, targets, num_classes or 1)
    stats = collect(model, data, requests, num_classes, batch_size, max_samples, progress) if requests else {}
    values = scorer.score(model, targets, stats, data=data, num_classes=num_classes)
    backends = sorted({s.backend for s in stats.values()})
    return Scores(values, scorer.name, scorer.options, meta={"backends": backends, "targets": targets})


def _num_classes(model: nn.Module, example) -> int:
    if example is None:
        raise InputError("num_classes is unknown: pass num_classes or data")
    with torch.no_grad():
        return int(model.eval()(example).shape[-1])


def edit(model: nn.Module, editor: str | Editor, scores: Scores | None = None, **options) -> EditRecord:
    """Apply an editor atomically: if it raises, the model is restored exactly."""
    editor = registry.get_editor(editor) if isinstance(editor, str) else editor
    with atomic(model):
        return editor.apply(model, scores, **options)


def prune(model: nn.Module, scores: Scores | str = "l1", ratio: float = 0.5, example_inputs=None,
          data=None, **options) -> EditRecord:
    """Score (if given a scorer name) and physically prune ``ratio`` of the channels."""
    example = example_inputs if example_inputs is not None else _example(data)
    if isinstance(scores, str):
        scores = score(model, scores, data=data, example_inputs=example)
    return edit(model, "prune", scores, ratio=ratio, example_inputs=example, **options)


def forget(model: nn.Module, forget_class: int, data, editor: str | Editor = "discedit-u",
           num_classes: int | None = None, **options) -> EditRecord:
    """Make ``model`` forget one class by editing the components that carry it.
    Forgetting editors receive ``data`` (labelled samples), ``forget_class`` and ``num_classes``."""
    num_classes = num_classes or _num_classes(model, _example(data))
    if not 0 <= int(forget_class) < num_classes:
        raise InputError(f"forget_class {forget_class} out of range [0, {num_classes - 1}]")
    return edit(model, editor, None, data=data, forget_class=int(forget_class),
                num_classes=num_classes, **options)
