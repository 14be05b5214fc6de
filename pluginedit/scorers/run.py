"""The one scoring path, used by the façade and by editors that rescore while they edit:
resolve scorers, gather their statistic requests, collect them in one pass, score."""
from __future__ import annotations

import torch
from torch import nn

from ..capture import Split, check_classes, check_runs, collect, default_targets, example_batch
from ..core import registry
from ..core.components import eval_mode, groups
from ..core.errors import InputError
from ..core.outputs import output
from ..core.plugin import Inputs, Scorer
from ..core.scores import Scores


def num_classes_of(model: nn.Module, example: torch.Tensor | None) -> int:
    """The width of the model's output on ``example``."""
    if example is None:
        raise InputError("num_classes is unknown: pass num_classes or data")
    with torch.no_grad(), eval_mode(model):
        out = output(model, example)
    return int(out.shape[-1])


def _resolve(scorer, options: dict) -> Scorer:
    if isinstance(scorer, Scorer):
        if options:
            raise InputError(f"options {sorted(options)} given with a scorer instance; set them on it")
        return scorer
    return registry.get_scorer(scorer, **options)


def _inputs(model, scorers, data, targets, num_classes, example) -> Inputs:
    if any(s.needs_data for s in scorers) and data is None:
        need = [s.name for s in scorers if s.needs_data]
        raise InputError(f"scorer {', '.join(map(repr, need))} needs data (labelled samples)")
    example = example if example is not None else example_batch(data)
    check_runs(model, example)
    if any(s.needs_labels for s in scorers):
        num_classes = num_classes or num_classes_of(model, example)
        if isinstance(data, Split):
            check_classes(data.y, num_classes)
    known = groups(model)
    if not known:
        raise InputError(f"the model ({type(model).__name__}) has no conv/linear layers to score")
    targets = list(targets or default_targets(model, example, num_classes))
    missing = [t for t in targets if t not in known]
    if missing:
        raise InputError(f"targets {missing} are not conv/linear layers of the model; known: {list(known)}")
    return Inputs(data=data, example=example, num_classes=num_classes, targets=tuple(targets))


def score_many(model: nn.Module, scorers: list, data=None, targets=None, num_classes=None,
               max_samples=None, batch_size=256, progress=False, example_inputs=None,
               options: dict | None = None) -> dict[str, Scores]:
    """Score with several scorers from one pass over ``data``: {scorer name: Scores}.
    ``options`` apply to a single scorer given by name. Read-only: every module runs in eval
    mode and gets its own training flag back, so no BatchNorm statistic moves."""
    with eval_mode(model):
        return _score_many(model, scorers, data, targets, num_classes, max_samples, batch_size,
                           progress, example_inputs, options)


def _score_many(model, scorers, data, targets, num_classes, max_samples, batch_size, progress,
                example_inputs, options) -> dict[str, Scores]:
    if options and len(scorers) != 1:
        raise InputError("options apply to one scorer; configure several as scorer instances")
    if len({getattr(s, "name", s) for s in scorers}) != len(scorers):
        raise InputError(f"scorers named twice in {[getattr(s, 'name', s) for s in scorers]}")
    scorers = [_resolve(s, options or {}) for s in scorers]
    inputs = _inputs(model, scorers, data, targets, num_classes, example_inputs)
    wanted = [dict(s.requests(model, inputs)) for s in scorers]
    handles = [h for w in wanted for h in w.values()]
    got = collect(model, data, handles, inputs.num_classes, batch_size, max_samples, progress) if handles else {}
    out = {}
    for s, w in zip(scorers, wanted):
        own = Inputs(**{**inputs.__dict__, "data": data if s.own_loop else None})
        values = s.score(model, {k: got[h] for k, h in w.items()}, own)
        values, extra = values if isinstance(values, tuple) else (values, {})
        backends = sorted({got[h].backend for h in w.values()})
        out[s.name] = Scores(values, s.name, s.options_dict(),
                             meta={"backends": backends, "targets": list(inputs.targets), **extra})
    return out


def score(model: nn.Module, scorer="l1", data=None, targets=None, num_classes=None, max_samples=None,
          batch_size=256, progress=False, example_inputs=None, **options) -> Scores:
    """Score the components of ``targets`` (default: every conv/linear layer but the head)."""
    name = scorer.name if isinstance(scorer, Scorer) else scorer
    return score_many(model, [scorer], data, targets, num_classes, max_samples, batch_size,
                      progress, example_inputs, options)[name]
