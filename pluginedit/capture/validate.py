"""What scoring and editing check before any pass over the data: a model with weights and a
component in each layer (``check_model``), data that is not empty (``check_nonempty``), an
example batch the model runs on (``check_runs``), labels and ``num_classes`` that agree with
each other and with the model's output (``check_classes``, ``checked_classes``), and all of it
in the order ``checked_inputs`` runs it."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core import checks
from ..core.batches import call
from ..core.components import check_targets, eval_mode, groups, heads_recorder, size_of
from ..core.errors import InputError
from ..core.outputs import output, primary, tensors
from ..core.plugin import Inputs
from .inputs import Split, default_targets, example_batch, for_model


def check_model(model: nn.Module, verb: str) -> None:
    """A model with data in it and a component in each conv / linear layer: one on the meta
    device (built without weights) or with a zero-width layer fails deep inside a statistic.
    One without any conv / linear layer has nothing to ``verb`` (score, edit)."""
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise InputError(
            f"the model's parameters are on the meta device (no data; {meta[0]!r} among "
            f"{len(meta)}): load weights first (model.to_empty(device=...), then load_state_dict)"
        )
    empty = [f"{p!r} ({m})" for p, m in groups(model).items() if size_of(m) == 0 or _no_weights(m)]
    if empty:
        raise InputError(
            f"zero-width layer(s) {', '.join(empty[:5])}: no weights, so no component to score "
            "or edit; remove them or give them a width"
        )
    if not groups(model):
        raise InputError(f"the model ({type(model).__name__}) has no conv/linear layers to {verb}")


def _no_weights(module: nn.Module) -> bool:
    """A conv / linear layer of zero input width (attention blocks have no ``weight``)."""
    weight = getattr(module, "weight", None)
    return torch.is_tensor(weight) and weight.numel() == 0


def check_nonempty(data) -> None:
    """Refuse data of known length without a sample (a Split, an (x, y) pair, a Dataset or its
    DataLoader); data of unknown length is found empty by ``example_batch``."""
    sized = (
        data.dataset
        if isinstance(data, DataLoader)
        else data[1]
        if isinstance(data, (tuple, list)) and len(data) == 2
        else data
    )
    try:
        n = len(sized) if data is not None else None
    except TypeError:
        return
    if n == 0:
        raise InputError("the data is empty: no sample to run the model on")


def check_runs(model: nn.Module, example):
    """One forward pass on the example batch, so that inputs the model cannot take (a wrong
    image size, channel count or dtype) are reported up front, not deep inside a statistic.
    Returns the model's raw output (None without an example), which later checks reuse."""
    if example is None:
        return None
    shape = (
        {k: tuple(v.shape) for k, v in example.items()}
        if isinstance(example, dict)
        else tuple(example.shape)
    )
    complex_ = sorted({str(t.dtype) for t in tensors(example) if t.is_complex()})
    if complex_:
        raise InputError(
            f"the inputs are complex-valued ({', '.join(complex_)}): pluginedit runs models on "
            "real inputs; pass magnitudes, or real and imaginary parts as channels"
        )
    try:
        with torch.no_grad(), eval_mode(model):
            return call(model, example)
    except Exception as e:
        raise InputError(
            f"the model cannot run on the data's inputs of shape {shape} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}){_dtype_hint(model, example)}"
        ) from e


def _dtype_hint(model: nn.Module, example) -> str:
    """Why integer inputs may not fit a model of floating weights (token ids do, images don't)."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    ints = sorted({str(t.dtype) for t in tensors(example) if not t.is_floating_point()})
    if p is None or not ints or isinstance(example, dict):
        return ""
    return (
        f"; the inputs are {', '.join(ints)} and the model computes in {p.dtype}: convert them "
        "(x.float(), scaled as in training)"
    )


def check_classes(
    y: torch.Tensor, num_classes: int, need: int = 2, source: str = "num_classes", note: str = ""
) -> None:
    """Labels in range and at least ``need`` distinct classes present; ``source`` says where
    ``num_classes`` came from (the argument, or the width of the model's output)."""
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(
            f"labels out of range: found [{int(y.min())}, {int(y.max())}], "
            f"expected [0, {num_classes - 1}] ({source} is {num_classes}){note}"
        )
    present = torch.unique(y).numel()
    if present < need:
        raise InputError(f"the data has {present} class(es); this needs at least {need}")


def labels_of(data) -> torch.Tensor | None:
    """The labels of a Split or an (x, y) pair, to check whole; None for a Dataset or a loader
    (their labels are checked batch by batch)."""
    y = (
        data.y
        if isinstance(data, Split)
        else data[1]
        if isinstance(data, (tuple, list)) and len(data) == 2
        else None
    )
    ok = (
        torch.is_tensor(y)
        and y.ndim == 1
        and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
    )
    return y if ok else None  # other labels get the batch check's message (dtype, shape)


def _output(model: nn.Module, example, raw=None) -> torch.Tensor:
    """``core.outputs.output`` on ``example``, from ``raw`` (its forward, run already) if given."""
    if raw is None:
        with torch.no_grad(), eval_mode(model):
            return output(model, example)
    out = (getattr(model, "pluginedit_output", None) or primary)(raw)
    if not torch.is_tensor(out):
        raise InputError(f"the output rule gave a {type(out).__name__}, not a tensor")
    return out


def checked_classes(
    model: nn.Module, data, example, num_classes: int | None, need: int, raw=None
) -> int | None:
    """``num_classes`` checked (or, where ``need`` > 0 classes are read, the model's output width),
    and the labels of a Split or an (x, y) pair checked against it, at least ``need`` classes
    present. Labels nothing reads are checked too, against num_classes or the width of a
    classifier's [N, K] output: a label beyond the model's classes is a mistake either way."""
    if num_classes is not None:
        checks.number("num_classes", num_classes, integer=True, at_least=max(need, 1))
        if need and example is not None:  # labels index the output: it needs that many
            width = _output(model, example, raw).shape
            if len(width) == 2 and num_classes > width[-1]:
                raise InputError(
                    f"num_classes {num_classes} is more than the model's output width {width[-1]}"
                )
    labels = labels_of(data)
    bound, source = num_classes, "num_classes"
    if bound is None and (need or labels is not None):
        if example is None:
            raise InputError("num_classes is unknown: pass num_classes or data")
        out = _output(model, example, raw)
        if need or out.ndim == 2:
            bound, source = int(out.shape[-1]), "the model's output width"
    if labels is not None and bound is not None:
        note = (
            ""
            if need
            else "; labels must be classes of the model even where nothing reads them (if its "
            "output is not class scores, pass num_classes)"
        )
        check_classes(labels, bound, need, source, note)
    return bound if need else num_classes


def checked_inputs(
    model: nn.Module,
    data,
    example,
    num_classes: int | None,
    need: int,
    targets=None,
    all_by_default: bool = False,
) -> Inputs:
    """What scoring and editing both check (after ``check_model``) before any pass over the data:
    non-empty data, float64 inputs converted for a float32 model (``for_model``), an example batch
    (the data's first sample unless given) that the model runs on (``check_runs``), ``num_classes``
    and the labels (``checked_classes``, ``need`` classes read), and the target layers: those
    given, else with ``all_by_default`` every conv / linear layer but the head."""
    check_nonempty(data)
    data, example = for_model(model, data, example)
    example = example if example is not None else example_batch(data)
    heads = None
    if not targets and all_by_default:  # the same forward finds the classifier head
        with heads_recorder(model) as found_in:
            raw = check_runs(model, example)
        heads = found_in(raw) if raw is not None else None
    else:
        raw = check_runs(model, example)  # one forward serves the class checks too
    num_classes = checked_classes(model, data, example, num_classes, need, raw)
    if not targets and all_by_default:
        targets = default_targets(model, example, num_classes, heads=heads)
    return Inputs(
        data=data,
        example=example,
        num_classes=num_classes,
        targets=check_targets(model, targets or ()),
    )
