"""Model inputs: labelled splits, loaders from whatever the user holds, validated batches on the
model's device, and the example batch that tracing and head detection need."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler
from tqdm.auto import tqdm

from ..core import checks
from ..core.batches import all_finite, batch_len, batch_to, take_rows
from ..core.components import (
    groups,
    kind_of,
    output_layers,
    size_of,
    transformer_units,
)
from ..core.errors import InputError
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
                f"Pairs: clean {tuple(self.clean.shape)} and corrupted "
                f"{tuple(self.corrupted.shape)} "
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


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


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
    model: nn.Module,
    example: torch.Tensor | None = None,
    num_classes: int | None = None,
    heads: list[str] | None = None,
) -> list[str]:
    """Every conv / linear layer except the classifier head; for a transformer, its attention
    blocks (heads) and FFN up projections (neurons)."""
    units = transformer_units(model)
    if units:
        return units
    # ``heads`` when a forward already found them (capture.checked_inputs): no second forward
    heads, layers = set(heads or head_layers(model, example, num_classes)), groups(model)
    return [p for p, m in layers.items() if p not in heads and kind_of(m) != "attn_head"]
