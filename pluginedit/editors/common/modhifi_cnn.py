"""ModHiFi-P on a CNN, one step, with bounded memory and few passes over the calibration data.

1. Scores (fidelity): one pass collecting ``PairStats`` on every consumer (the weight gradient of
   each layer: the cost of a forward, no Gram of all the inputs).
2. Plan: torch-pruning's MetaPruner run on a copy of the model gives, for every consumer, the
   inputs it loses (in its original numbering: a consumer of a concatenation loses inputs in
   several groups) and the outputs it keeps.
3. delta*: one pass collecting ``KeptStats`` on the dense model: the Gram of the kept inputs only
   (a quarter of the full Gram at half the channels), or, when even that exceeds the memory
   budget (a Linear reading a flattened C x H x W map), per-position Grams of the kept channels.
   Every consumer is refit once, against its final set of kept inputs, before anything is
   removed.
4. Removal with torch-pruning (the same decisions: checked), recorded as replayable steps.

When both 1 and 3 run, they read disjoint halves of the calibration samples (``halves``), so
each sample is forwarded once; the BN recalibration that follows reads them all. The per-layer
memory budget is ``PLUGINEDIT_GRAM_BUDGET`` bytes (default 1 GiB; suffixes K, M, G): no delta*
statistic larger than it is ever allocated."""

from __future__ import annotations

import os
import time

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, Subset

from ...capture import Request, Split, collect
from ...core.batches import call, take_rows
from ...core.components import eval_mode, get_module
from ...core.errors import InputError
from ...core.progress import bar
from ...graph.groups import is_in, is_out
from ...scorers.fidelity import channel_scores_from, geometry, linear_blocks, pair_requests
from ...stats.layer_io import KeptStats, conv_geometry
from .compensate import refit_from

BUDGET_ENV = "PLUGINEDIT_GRAM_BUDGET"
DEFAULT_BUDGET = 1 << 30
ACTIVATION_BYTES = 256 << 20  # the largest activation of one calibration batch


def gram_budget() -> int:
    """Bytes one layer's delta* statistics may take (``PLUGINEDIT_GRAM_BUDGET``)."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1].upper(), 1)
    try:
        value = float(raw[:-1] if scale > 1 else raw) * scale
    except ValueError:
        raise InputError(f"{BUDGET_ENV}={raw!r}: give bytes, e.g. 1073741824 or 1G") from None
    if value <= 0:
        raise InputError(f"{BUDGET_ENV}={raw!r} must be positive")
    return int(value)


@torch.no_grad()
def calib_batch(model: nn.Module, example, cap: int = 256, budget: int = ACTIVATION_BYTES) -> int:
    """A calibration batch size whose largest activation stays within ``budget`` bytes (one
    forward of the one-sample ``example`` measures every module's output)."""
    largest = [0]

    def hook(module, inputs, out):
        if torch.is_tensor(out):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with eval_mode(model):
            call(model, example)
    finally:
        for h in handles:
            h.remove()
    return int(max(1, min(cap, budget // max(1, largest[0]))))


def halves(data, n_max: int):
    """Two disjoint halves of the first ``n_max`` samples of ``data`` (a Split, (x, y) tensors or
    a sized Dataset), or None where ``data`` cannot be cut (a DataLoader, an iterable)."""
    if isinstance(data, Split) or (
        isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[1])
    ):
        x, y = (data.x, data.y) if isinstance(data, Split) else data
        n = min(len(y), n_max)
        if n < 2:
            return None
        h = n // 2
        return (take_rows(x, slice(0, h)), y[:h]), (take_rows(x, slice(h, n)), y[h:n])
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        try:
            n = min(len(data), n_max)
        except TypeError:
            return None
        if n < 2:
            return None
        return Subset(data, range(n // 2)), Subset(data, range(n // 2, n))
    return None


def calib_count(data, n_max: int) -> int:
    """How many samples a calibration pass over ``data`` reads: at most ``n_max`` (an unsized
    loader counts as ``n_max``: the pass stops there)."""
    if isinstance(data, Split) or (
        isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[1])
    ):
        data = data.y if isinstance(data, Split) else data[1]
    try:
        return min(len(data), n_max)
    except TypeError:
        return n_max


def fidelity_scores(model, cons, data, variant, reduce, batch, max_samples):
    """Channel scores of the producers of ``cons`` (``graph.groups.consumers``) from one pass
    of ``PairStats`` over ``data``."""
    used = {c for entries in cons.values() for c, _, _ in entries}
    reqs = pair_requests(model, cons, used, blocks=variant in ("fidelity", "alpha"))
    got = collect(model, data, reqs.values(), batch_size=batch, max_samples=max_samples)
    return channel_scores_from(cons, {p: got[r] for p, r in reqs.items()}, variant, reduce)


class Removals:
    """A ``before_group`` hook of the pruner that records what each group removes, every index
    in the layer's original numbering (a consumer of a concatenation loses inputs in several
    groups, each numbered after the ones before): ``removed["in"|"out"][path]``."""

    def __init__(self):
        self.alive: dict[tuple, list[int]] = {}
        self.sets: dict[str, dict[str, set]] = {"in": {}, "out": {}}

    def __call__(self, group, paths) -> None:
        for dep, idxs in group:
            path = paths.get(dep.layer)
            side = "in" if is_in(dep.pruning_fn) else "out" if is_out(dep.pruning_fn) else None
            if path is None or side is None or not idxs:
                continue
            layer = dep.layer
            if side == "in":
                width = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
            else:
                width = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            now = self.alive.setdefault((side, path), list(range(width)))
            gone = {int(i) for i in idxs}
            self.sets[side].setdefault(path, set()).update(now[i] for i in gone)
            self.alive[side, path] = [a for k, a in enumerate(now) if k not in gone]

    @property
    def removed(self) -> dict:
        return {side: {p: sorted(v) for p, v in d.items()} for side, d in self.sets.items()}


def _kept_request(model, path, removed_in, removed_out, sizes, budget):
    """(Request, None) for a consumer's delta* statistics, or (None, why not)."""
    m = get_module(model, path)
    if isinstance(m, nn.Conv2d):
        if m.groups == m.in_channels > 1:
            return None, None  # depthwise: its output goes with its input
        try:
            conv = geometry(m) or conv_geometry(m)  # "same" padding as numbers, else why not
        except InputError as e:
            return None, str(e)
        n_in, size, groups = m.in_channels, m.weight[0, 0].numel(), m.groups
    elif isinstance(m, nn.Linear):
        conv, n_in, size, groups = None, m.in_features, sizes.get(path, 1), 1
    else:
        return None, f"{type(m).__name__} is not refit"
    co = m.weight.shape[0]
    drop = set(removed_in)
    rows = torch.tensor([r for r in range(co) if r not in set(removed_out)], dtype=torch.long)
    if conv is None and size > 1:
        channels = {i // size for i in drop}
        whole = all(c * size + s in drop for c in channels for s in range(size))
    else:
        whole = True
    unit = size if conv is not None else 1
    keep = torch.tensor([i for i in range(n_in) if i not in drop], dtype=torch.long)
    if len(keep) == 0 or len(rows) == 0:
        return None, None
    if groups > 1:
        per = n_in // groups
        counts = torch.bincount(keep // per, minlength=groups)
        outs = torch.bincount(rows // (co // groups), minlength=groups)
        if len(set(counts.tolist())) > 1 or len(set(outs.tolist())) > 1:
            return None, "a grouped conv losing unequal numbers of inputs per group"
    dk = len(keep) // groups * unit
    exact = 8 * groups * dk * dk * 3 // 2 + 8 * dk * len(rows)  # fp64 state + fp32 batch Gram
    kw = dict(bias=m.bias, conv=conv, backend=None)
    if exact <= budget:
        return Request(path, KeptStats(m.weight, keep, rows, **kw), "io"), None
    # position mode: a conv's kernel offsets, a flattened channel's H*W positions
    s = size if conv is not None else size if whole else 1
    ck = len(keep) if conv is not None else len(keep) // s
    pos = 8 * s * ck * (ck + len(rows))
    if groups == 1 and s > 1 and pos <= budget:
        kept = keep if conv is not None else torch.unique(keep // s)
        st = KeptStats(m.weight, kept, rows, mode="position", block=s, **kw)
        return Request(path, st, "io"), None
    return None, (
        f"its delta* statistics need {_size(exact)} (exact) / {_size(pos)} (per position) > "
        f"{BUDGET_ENV}={_size(budget)}"
    )


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def compensate_all(model, cons, data, removed, bns, opts, batch, seconds) -> dict:
    """delta* on every consumer of a removed input, on the dense model, before removal
    (``cons``: the consumer map, for the channel structure of Linear inputs). Returns
    {"ridges": [...], "skipped": {path: why}, "modes": {path: mode}}."""
    budget = gram_budget()
    sizes = linear_blocks(cons)
    reqs, skipped = {}, {}
    for path, idx in removed["in"].items():
        req, why = _kept_request(model, path, idx, removed["out"].get(path, []), sizes, budget)
        if req is not None:
            reqs[path] = req
        elif why:
            skipped[path] = why
    t = time.perf_counter()
    got = collect(model, data, reqs.values(), batch_size=batch, max_samples=opts.calib_samples)
    seconds["statistics"] += time.perf_counter() - t
    t = time.perf_counter()
    ridges, modes = [], {}
    for path, req in bar(reqs.items(), desc="modhifi-p compensation", total=len(reqs)):
        st = got.pop(req)
        modes[path] = st.mode
        ridges.append(
            refit_from(get_module(model, path), st, bns.get(path), opts.ridge, conv=opts.conv_refit)
        )
        del st
    seconds["solves"] += time.perf_counter() - t
    return {"ridges": ridges, "skipped": skipped, "modes": modes}
