"""Checks of the scalar arguments that reach the toolkit from users (sizes, counts, seeds, plugin
options) and of class labels: one helper each, so every entry point words the same problem the
same way, naming the argument, the value and what is expected."""

from __future__ import annotations

import math
import numbers

import torch

from .errors import InputError

MAX_SEED = 2**64 - 1  # torch generators take seeds of at most 64 bits
MAX_CLASSES = 100_000  # more classes than this is a label mistake, not a data set


def number(
    name: str,
    value,
    *,
    integer: bool = False,
    above=None,
    at_least=None,
    below=None,
    at_most=None,
    optional: bool = False,
):
    """``value`` if it is a finite real number (an integer when ``integer``; never a bool) within
    the bounds given (``above``/``below`` strict, ``at_least``/``at_most`` inclusive), else an
    InputError naming ``name``; None passes when ``optional``."""
    if value is None and optional:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    low = above if above is not None else at_least
    high = below if below is not None else at_most
    finite = isinstance(value, numbers.Integral) or math.isfinite(value)  # huge ints have no float
    inside = (
        finite
        and (low is None or value > low or (above is None and value == low))
        and (high is None or value < high or (below is None and value == high))
    )
    if not inside:
        raise InputError(f"{name} must {_interval(above, at_least, below, at_most)}, got {value}")
    return value


def _interval(above, at_least, below, at_most) -> str:
    """'lie in (0, 1]', 'be >= 1', 'be finite'."""
    low = f"({above}" if above is not None else f"[{at_least}" if at_least is not None else None
    high = f"{below})" if below is not None else f"{at_most}]" if at_most is not None else None
    if low and high:
        return f"lie in {low}, {high}"
    if low or high:
        return "be " + (
            f"> {above}"
            if above is not None
            else f">= {at_least}"
            if at_least is not None
            else f"< {below}"
            if below is not None
            else f"<= {at_most}"
        )
    return "be finite"


def seed(value, name: str = "seed", bits: int = 64) -> int:
    """A seed a generator of ``bits`` bits takes: an integer in [0, 2**bits - 1]."""
    return number(name, value, integer=True, at_least=0, at_most=2**bits - 1)


def label_problem(
    y: torch.Tensor, limit: int = MAX_CLASSES, whole_floats: bool = False
) -> str | None:
    """What makes ``y`` unusable as class labels, worded to follow "labels ", or None: checked
    before anything is sized by the largest label. Labels are a 1-D tensor of integers (or, with
    ``whole_floats``, of floats that are whole numbers) in [0, ``limit``)."""
    if not torch.is_tensor(y) or y.ndim != 1:
        return (
            f"must be a 1-D integer array, got {getattr(y, 'dtype', type(y).__name__)} "
            f"{tuple(getattr(y, 'shape', ()))}"
        )
    if y.dtype == torch.bool or y.is_complex() or (y.is_floating_point() and not whole_floats):
        return f"must be a 1-D integer array (class indices 0, 1, ...), got dtype {y.dtype}"
    if y.is_floating_point() and not bool((torch.isfinite(y) & (y == y.round())).all()):
        bad = y[~(torch.isfinite(y) & (y == y.round()))][0].item()
        return (
            f"must be a 1-D integer array, got {y.dtype} values that are not whole numbers "
            f"(e.g. {bad})"
        )
    if len(y) and int(y.min()) < 0:
        return f"must be >= 0, found {int(y.min())}"
    if len(y) and int(y.max()) >= limit:
        return (
            f"go up to {int(y.max())}: more than the {limit:,} classes supported "
            f"(labels 0..{limit - 1}); "
            "are these class indices?"
        )
    return None
