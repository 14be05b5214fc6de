"""The one scoring path, used by the façade and by editors that rescore while they edit:
resolve scorers, gather their statistic requests, collect them in one pass, score."""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..capture import check_model, checked_inputs, collect
from ..core import registry
from ..core.checks import number
from ..core.components import eval_mode
from ..core.errors import InputError, PluginRunError
from ..core.outputs import output
from ..core.plugin import Inputs, Scorer, failures_named
from ..core.record import buffers_kept
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
            raise InputError(
                f"options {sorted(options)} given with a scorer instance; set them on it"
            )
        return scorer
    return registry.get_scorer(scorer, **options)


def _inputs(model, scorers, data, targets, num_classes, example) -> Inputs:
    """Everything the scorers read, checked before any pass over the data; ``data`` and
    ``example`` come back with float64 inputs converted for a float32 model."""
    check_model(model, "score")
    if any(s.needs_data for s in scorers) and data is None:
        need = [s.name for s in scorers if s.needs_data]
        raise InputError(f"scorer {', '.join(map(repr, need))} needs data (labelled samples)")
    return checked_inputs(
        model,
        data,
        example,
        num_classes,
        need=2 if any(s.needs_labels for s in scorers) else 0,
        targets=targets,
        all_by_default=True,
    )


def _read_only(fn):
    """Run ``fn(model, ...)`` with every module in eval mode and every buffer kept."""

    @functools.wraps(fn)
    def read_only(model, *args, **kwargs):
        with buffers_kept(model), eval_mode(model):
            return fn(model, *args, **kwargs)

    return read_only


@_read_only
def score_many(
    model: nn.Module,
    scorers: list,
    data=None,
    targets=None,
    num_classes=None,
    max_samples=None,
    batch_size=256,
    progress=False,
    example_inputs=None,
    options: dict | None = None,
) -> dict[str, Scores]:
    """Score with several scorers from one pass over ``data``: {scorer name: Scores}.
    ``options`` apply to a single scorer given by name. Read-only: every module runs in eval
    mode and gets its own training flag back, so no BatchNorm statistic moves, and every buffer
    is put back as it was (a forward that updates a buffer of its own, a call counter, leaves
    no trace)."""
    if options and len(scorers) != 1:
        raise InputError("options apply to one scorer; configure several as scorer instances")
    if len({getattr(s, "name", s) for s in scorers}) != len(scorers):
        raise InputError(f"scorers named twice in {[getattr(s, 'name', s) for s in scorers]}")
    scorers = [_resolve(s, options or {}) for s in scorers]
    number("batch_size", batch_size, integer=True, at_least=1)
    number("max_samples", max_samples, integer=True, at_least=1, optional=True)
    inputs = _inputs(model, scorers, data, targets, num_classes, example_inputs)
    data = inputs.data  # float64 inputs converted for the model
    wanted = []
    for s in scorers:
        with failures_named(f"scorer {s.name!r}"):
            wanted.append(dict(s.requests(model, inputs)))
    handles = [h for w in wanted for h in w.values()]
    got = (
        collect(model, data, handles, inputs.num_classes, batch_size, max_samples, progress)
        if handles
        else {}
    )
    out = {}
    for s, w in zip(scorers, wanted):
        own = Inputs(**{**inputs.__dict__, "data": data if s.own_loop else None})
        with failures_named(f"scorer {s.name!r}"):
            values = s.score(model, {k: got[h] for k, h in w.items()}, own)
            values, extra = values if isinstance(values, tuple) else (values, {})
        backends = sorted({got[h].backend for h in w.values()})
        out[s.name] = _result(
            model, s, values, {"backends": backends, "targets": list(inputs.targets), **extra}
        )
    return out


def _result(model: nn.Module, scorer: Scorer, values, meta: dict) -> Scores:
    """A scorer's result as Scores, refused unless it holds finite 1-D tensors with one score per
    component of layers the model has."""
    if not isinstance(values, dict) or not all(torch.is_tensor(v) for v in values.values()):
        raise PluginRunError(
            f"scorer {scorer.name!r} returned {type(values).__name__}, not a dict "
            "of {layer path: 1-D tensor}"
        )
    scores = Scores(values, scorer.name, scorer.options_dict(), meta=meta)
    try:
        scores.check_fits(model)
    except InputError as e:
        raise PluginRunError(
            f"scorer {scores.scorer!r} returned scores that do not fit the model: {e}"
        ) from e
    return scores


def score(
    model: nn.Module,
    scorer="l1",
    data=None,
    targets=None,
    num_classes=None,
    max_samples=None,
    batch_size=256,
    progress=False,
    example_inputs=None,
    **options,
) -> Scores:
    """Score the components of ``targets`` (default: every conv/linear layer but the head)."""
    name = scorer.name if isinstance(scorer, Scorer) else scorer
    return score_many(
        model,
        [scorer],
        data,
        targets,
        num_classes,
        max_samples,
        batch_size,
        progress,
        example_inputs,
        options,
    )[name]
