"""Model inputs: labelled splits, loaders from whatever the user holds, validated batches on the
model's device, and the example batch that tracing and head detection need."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler
from tqdm.auto import tqdm

from ..core import checks
from ..core.batches import all_finite, batch_len, batch_to, call, take_rows
from ..core.components import (
    check_targets,
    eval_mode,
    groups,
    kind_of,
    output_layers,
    size_of,
    transformer_units,
)
from ..core.errors import InputError
from ..core.outputs import output, tensors
from ..core.plugin import Inputs
from ..stats import check_labels
from ..stats.distributed import world


@dataclass
class Split:
    x: torch.Tensor | dict  # [N, C, H, W] float32, normalised; or {name: [N, ...]} (token ids)
    y: torch.Tensor  # [N] int64 (zeros for unlabelled calibration text)

    def __len__(self):
        return len(self.y)

    def subset(self, n: int | None = None, classes=None, exclude=None, seed: int = 0) -> Split:
        """A class-filtered, optionally random ``n``-sample subset."""
        keep = torch.ones(len(self.y), dtype=torch.bool)
        if classes is not None:
            keep &= torch.isin(self.y, torch.as_tensor(list(classes)))
        if exclude is not None:
            keep &= ~torch.isin(self.y, torch.as_tensor(list(exclude)))
        idx = keep.nonzero().squeeze(1)
        if n is not None and n < len(idx):
            g = torch.Generator().manual_seed(checks.seed(seed))
            idx = idx[torch.randperm(len(idx), generator=g)[:n]].sort().values
        return Split(take_rows(self.x, idx), self.y[idx])


@dataclass
class Pairs:
    """Clean / corrupted input pairs for rectification: ``corrupted[i]`` carries the trigger or
    artefact, ``clean[i]`` is its cleansed version, ``y[i]`` the label the corrupted input should
    get."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if not (
            torch.is_tensor(self.clean)
            and torch.is_tensor(self.corrupted)
            and torch.is_tensor(self.y)
        ):
            raise InputError("Pairs needs tensors clean, corrupted and y")
        if (
            self.clean.shape != self.corrupted.shape
            or self.clean.ndim < 2
            or len(self.y) != len(self.clean)
        ):
            raise InputError(
                f"Pairs: clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} "
                f"must have the same [n, ...] shape and y {tuple(self.y.shape)} n labels"
            )
        if len(self.y) == 0:
            raise InputError("Pairs: at least one clean / corrupted pair is needed")
        if not (torch.isfinite(self.clean).all() and torch.isfinite(self.corrupted).all()):
            raise InputError("Pairs: NaN or Inf in the inputs")

    def __len__(self):
        return len(self.y)


class _Rows(Dataset):
    """(x, y) rows of a tensor or of a mapping of tensors (the default collate re-batches both)."""

    def __init__(self, x, y):
        if torch.is_tensor(x) and x.ndim < 2:
            raise InputError(
                f"inputs of shape {tuple(x.shape)} have no feature dimension: inputs need a "
                "sample dimension plus feature dimensions, [N, features...] (for one value "
                "per sample, x.unsqueeze(1))"
            )
        n = batch_len(x)
        if n != len(y):
            raise InputError(f"{n} inputs but {len(y)} labels")
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return take_rows(self.x, i), self.y[i]


def as_loader(data, batch_size: int = 256, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader of (x, y) from a Split, an (x, y) pair (x a tensor or a mapping of tensors),
    a Dataset or a DataLoader."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Split):
        data = _Rows(data.x, data.y)
    elif (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and torch.is_tensor(data[1])
        and (torch.is_tensor(data[0]) or isinstance(data[0], dict))
    ):
        data = _Rows(*data)
    if not isinstance(data, Dataset):
        raise InputError(
            f"cannot make a loader from {type(data).__name__}; "
            "pass a Split, (x, y) tensors, a Dataset or a DataLoader"
        )
    checks.number("batch_size", batch_size, integer=True, at_least=1)
    g = torch.Generator().manual_seed(checks.seed(seed))
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=g)


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


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


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


def _model_floats(model: nn.Module, x):
    """``x`` with float64 tensors as float32 for a float32 model: float64 is what NumPy hands
    out by default, and float32 keeps its meaning at the precision the model computes in.
    Other dtypes are left for the model to take or refuse (``check_runs`` names them)."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is None or p.dtype != torch.float32:
        return x
    if isinstance(x, dict):
        return {k: _model_floats(model, v) for k, v in x.items()}
    return x.float() if torch.is_tensor(x) and x.dtype == torch.float64 else x


def for_model(model: nn.Module, data, example):
    """(data, example) with float64 inputs converted for a float32 model (``_model_floats``):
    a Split or an (x, y) pair whole, as a new object (the caller's stays as it is); a Dataset
    or a DataLoader batch by batch in ``batches``."""
    if example is not None:
        example = _model_floats(model, example)
    if isinstance(data, Split):
        data = Split(_model_floats(model, data.x), data.y)
    elif isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[1]):
        data = (_model_floats(model, data[0]), data[1])
    return data, example


def checked_classes(
    model: nn.Module, data, example, num_classes: int | None, need: int
) -> int | None:
    """``num_classes`` checked (or, where ``need`` > 0 classes are read, the model's output width),
    and the labels of a Split or an (x, y) pair checked against it, at least ``need`` classes
    present. Labels nothing reads are checked too, against num_classes or the width of a
    classifier's [N, K] output: a label beyond the model's classes is a mistake either way."""
    if num_classes is not None:
        checks.number("num_classes", num_classes, integer=True, at_least=max(need, 1))
        if need and example is not None:  # labels index the output: it needs that many
            with torch.no_grad(), eval_mode(model):
                width = output(model, example).shape
            if len(width) == 2 and num_classes > width[-1]:
                raise InputError(
                    f"num_classes {num_classes} is more than the model's output width {width[-1]}"
                )
    labels = labels_of(data)
    bound, source = num_classes, "num_classes"
    if bound is None and (need or labels is not None):
        if example is None:
            raise InputError("num_classes is unknown: pass num_classes or data")
        with torch.no_grad(), eval_mode(model):
            out = output(model, example)
        if need or out.ndim == 2:
            bound, source = int(out.shape[-1]), "the model's output width"
    if labels is not None and bound is not None:
        check_classes(
            labels,
            bound,
            need,
            source,
            ""
            if need
            else "; labels must be classes of the model even where nothing reads them (if its output "
            "is not class scores, pass num_classes)",
        )
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
    check_runs(model, example)
    num_classes = checked_classes(model, data, example, num_classes, need)
    if not targets and all_by_default:
        targets = default_targets(model, example, num_classes)
    return Inputs(
        data=data,
        example=example,
        num_classes=num_classes,
        targets=check_targets(model, targets or ()),
    )


def _sharded(data, batch_size: int, max_samples: int | None, comm):
    """(loader, its first ``max_samples`` are already cut) of this rank's batches: batch b of the
    whole pass goes to rank b mod world size. A Split, tensors or a Dataset are sliced straight
    into those batches; a DataLoader (or an iterable data set) is read whole and the other
    ranks' batches skipped."""
    if isinstance(data, DataLoader):
        sampler = getattr(data.batch_sampler, "sampler", data.sampler)
        if isinstance(sampler, RandomSampler) and sampler.generator is None:
            raise InputError(
                "a shuffling DataLoader without a seeded generator reads its batches in a "
                "different order on every rank: sharding it would count samples twice and "
                "drop others; pass the data set, or a DataLoader with generator="
            )
        return data, False
    dataset = as_loader(data, batch_size=1).dataset
    if isinstance(dataset, IterableDataset):
        return as_loader(data, batch_size=batch_size), False
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    mine = [
        list(range(b * batch_size, min((b + 1) * batch_size, n)))
        for b in range(comm.rank, -(-n // batch_size), comm.size)
    ]
    return DataLoader(dataset, batch_sampler=mine), True


def batches(
    model: nn.Module,
    data,
    num_classes: int | None,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = False,
    desc: str = "batches",
    shard: bool = False,
):
    """Validated (x, y) batches on the model's device: finite inputs, labels in range. With
    ``shard`` and a process group (``stats.distributed``), this rank's batches only: batch b of
    the single-process pass goes to rank b mod world size, so each batch is exactly the batch one
    process would see, and none is read twice or dropped."""
    checks.number("max_samples", max_samples, integer=True, at_least=1, optional=True)
    device = model_device(model)
    comm = world() if shard else None
    if comm is None:
        loader, cut = as_loader(data, batch_size=batch_size), False
    else:
        loader, cut = _sharded(data, batch_size, max_samples, comm)
    seen = 0
    for b, (x, y) in enumerate(tqdm(loader, desc=desc, disable=not progress, leave=False)):
        if not cut and max_samples is not None:
            if seen >= max_samples:
                break
            x, y = take_rows(x, slice(0, max_samples - seen)), y[: max_samples - seen]
        seen += batch_len(x)
        if comm is not None and not cut and not comm.mine(b):
            continue
        if not all_finite(x):
            raise InputError("NaN or Inf in the input data")
        if num_classes is not None:
            y = check_labels(y, num_classes, batch_len(x))
        yield batch_to(_model_floats(model, x), device), y.to(device)


def example_batch(data) -> torch.Tensor | None:
    """One input sample, batched ([1, ...]), from anything ``as_loader`` accepts (a plain
    ``Dataset`` yields unbatched samples: the loader batches them)."""
    if data is None:
        return None
    if isinstance(data, Split) and len(data):
        return take_rows(data.x, slice(0, 1))
    try:
        x = next(iter(as_loader(data, batch_size=1)))[0]
    except StopIteration:
        raise InputError("the data is empty: no sample to run the model on") from None
    return take_rows(x, slice(0, 1))


def check_runs(model: nn.Module, example) -> None:
    """One forward pass on the example batch, so that inputs the model cannot take (a wrong
    image size, channel count or dtype) are reported up front, not deep inside a statistic."""
    if example is None:
        return
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
            call(model, example)
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


def head_layers(
    model: nn.Module, example: torch.Tensor | None = None, num_classes: int | None = None
) -> list[str]:
    """The classifier head: the component layers whose output is the model's output, found by a
    forward pass on ``example``; without one, the last layer with ``num_classes`` outputs.
    Pruning or masking their units would remove classes, so nothing edits them by default."""
    if example is not None:
        return output_layers(model, example)
    if num_classes is not None:
        last = [p for p, m in groups(model).items() if size_of(m) == num_classes]
        if last:
            return last[-1:]
    raise InputError(
        "cannot tell the classifier head: pass data, example_inputs or num_classes "
        "(or the targets to score)"
    )


def default_targets(
    model: nn.Module, example: torch.Tensor | None = None, num_classes: int | None = None
) -> list[str]:
    """Every conv / linear layer except the classifier head; for a transformer, its attention
    blocks (heads) and FFN up projections (neurons)."""
    units = transformer_units(model)
    if units:
        return units
    heads = set(head_layers(model, example, num_classes))
    return [p for p in groups(model) if p not in heads and kind_of(groups(model)[p]) != "attn_head"]
