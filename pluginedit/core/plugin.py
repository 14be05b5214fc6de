"""The plugin contracts.

A scorer turns statistics (or weights, or its own loop) into importance vectors; an editor turns
Scores into an edited model and an EditRecord. Each plugin declares its options as a frozen
dataclass (``Options``), validated once here: an unknown or mistyped option is an error that
lists the known ones, and a value of the wrong type, outside its choices or outside the range
its ``option(...)`` declares names the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from .checks import MAX_SEED, number
from .errors import InputError, PluginEditError, PluginRunError
from .record import EditRecord
from .scores import Scores

API_VERSION = 1
EDITOR_KINDS = ("prune", "forget", "mask", "rectify")


def option(
    default: Any = None,
    help: str = "",
    *,
    above=None,
    at_least=None,
    below=None,
    at_most=None,
    **kw,
) -> Any:
    """A plugin option with its default and one line of help (``pluginedit plugins --describe``).
    A numeric option may declare its range (``above``/``below`` strict, ``at_least``/``at_most``
    inclusive), checked with its type; every float option must be finite."""
    bounds = {
        k: v
        for k, v in dict(above=above, at_least=at_least, below=below, at_most=at_most).items()
        if v is not None
    }
    metadata = {"help": help, "bounds": bounds}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata=metadata, **kw
        )
    return dataclasses.field(default=default, metadata=metadata, **kw)


# ranges shared by many options: option(0.5, "...", **RATIO)
RATIO = {"above": 0, "below": 1}  # a share removed: something goes, something stays
FRACTION = {"at_least": 0, "at_most": 1}  # an accuracy, a drop, an interpolation weight
POSITIVE = {"above": 0}  # learning rates, scales
NONNEGATIVE = {"at_least": 0}
COUNT = {"at_least": 1}  # samples, steps, ranks, batch sizes
SEED = {"at_least": 0, "at_most": MAX_SEED}  # what torch generators take


@dataclass(frozen=True)
class NoOptions:
    """A plugin without options."""


def _check_type(owner: str, name: str, value, hint) -> Any:
    """``value`` checked (and ints widened to float, tuples made lists) against a simple
    annotation; other annotations are the plugin's ``__post_init__``'s business."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise InputError(
                f"option {name!r} of {owner!r} must be one of {list(args)}, got {value!r}"
            )
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:  # X | None: X's own message
            return _check_type(owner, name, value, others[0])
        for a in others:
            try:
                return _check_type(owner, name, value, a)
            except InputError:
                continue
        raise InputError(f"option {name!r} of {owner!r} must be {hint}, got {value!r}")
    if hint in (list, dict) or origin in (list, dict):
        return _check_container(owner, name, value, origin or hint, args)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    ):
        raise InputError(f"option {name!r} of {owner!r} must be {hint.__name__}, got {value!r}")
    return value


def _check_container(
    owner: str, name: str, value, kind: type[list] | type[dict], args: tuple
) -> Any:
    """A list (a tuple becomes one) or a dict, its elements checked against ``list[T]``'s T. A
    bare string is refused, not split into characters."""
    if kind is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, kind):
        example = (
            "{'features.0': [1, 2]}"
            if kind is dict
            else "[3, 17]"
            if args == (int,)
            else "['features.0', 'features.3']"
        )
        raise InputError(
            f"option {name!r} of {owner!r} must be a {kind.__name__} (e.g. {example}), "
            f"got {value!r}"
        )
    if kind is list and args:
        return [_check_type(owner, f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
    return value


def _check_range(owner: str, field: dataclasses.Field, value) -> None:
    """A number within the field's declared bounds (and finite, if a float)."""
    bounds = field.metadata.get("bounds") or {}
    if isinstance(value, float) or (
        bounds and isinstance(value, int) and not isinstance(value, bool)
    ):
        try:
            number(field.name, value, integer=isinstance(value, int), **bounds)
        except InputError as e:
            raise InputError(f"option {field.name!r} of {owner!r}: {e}") from None


def make_options(cls: type, values: Mapping[str, Any], owner: str):
    """An instance of the options dataclass ``cls`` from ``values``, validated."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(
            f"unknown option(s) {unknown} for {owner!r}; known: {sorted(fields) or 'none'}"
        )
    hints = typing.get_type_hints(cls)
    checked = {k: _check_type(owner, k, v, hints.get(k, Any)) for k, v in values.items()}
    for k, v in checked.items():
        _check_range(owner, fields[k], v)
    try:
        return cls(**checked)
    except (TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"bad options for {owner!r}: {e}") from e


def describe(plugin: type[_Plugin]) -> list[tuple[str, str, str]]:
    """(name, default, help) of every option of a plugin class."""
    rows = []
    for f in dataclasses.fields(plugin.Options):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # an option without a default has none to show
            raise TypeError(f"option {f.name!r} of {plugin.__name__} has no default")
        rows.append((f.name, repr(default), f.metadata.get("help", "")))
    return rows


@contextlib.contextmanager
def failures_named(what: str):
    """Run a plugin's code: an exception of its own (not a pluginedit error, not an interrupt)
    becomes a ``PluginRunError`` naming ``what`` ("scorer 'x'"), the original chained."""
    try:
        yield
    except PluginEditError:
        raise
    except Exception as e:
        raise PluginRunError(f"{what} failed: {type(e).__name__}: {e}") from e


class _Plugin:
    name: ClassVar[str] = ""
    api_version: ClassVar[int] = API_VERSION
    Options: ClassVar[type] = NoOptions

    def __init__(self, **options):
        self.options = make_options(self.Options, options, self.name or type(self).__name__)

    def options_dict(self) -> dict:
        """The options used, shallow (no copy of tensors or data sets an option may hold)."""
        return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}


@dataclass(frozen=True)
class Inputs:
    """What a plugin may read besides the model. ``data`` (labelled batches) reaches a scorer only
    if it runs its own loop (``own_loop``); statistics reach it through ``requests``."""

    data: Any = None
    example: torch.Tensor | None = None  # one input batch: tracing, head detection
    num_classes: int | None = None
    targets: tuple[str, ...] = ()  # the layers being scored / edited
    forget_class: int | None = None  # forgetting editors
    pairs: Any = None  # rectifying editors: capture.Pairs (clean, corrupted, y)


class Scorer(_Plugin):
    """Subclass, set ``name`` (and ``Options``), implement ``score``. Declare statistics in
    ``requests`` (a mapping of your own keys to ``Request`` handles); ``score`` then receives
    the collected statistics under the same keys, so several scorers can share one pass."""

    needs_data: ClassVar[bool] = False  # needs (x, y) batches at all
    needs_labels: ClassVar[bool] = False  # needs class labels (class-conditional statistics)
    own_loop: ClassVar[bool] = False  # reads ``inputs.data`` itself (gradients, masked forwards)

    def requests(self, model: nn.Module, inputs: Inputs) -> Mapping[Any, Any]:
        return {}

    def score(
        self, model: nn.Module, stats: Mapping[Any, Any], inputs: Inputs
    ) -> dict[str, torch.Tensor]:
        """{layer path: 1-D importance} (higher = more important), or ({...}, meta dict) to add
        to ``Scores.meta``."""
        raise NotImplementedError


class Editor(_Plugin):
    """Subclass, set ``name``, ``kind`` and the flags, implement ``apply``. The framework runs
    ``apply`` atomically: if it raises, the model is restored in place."""

    kind: ClassVar[str] = "prune"  # one of EDITOR_KINDS
    needs_data: ClassVar[bool] = False  # reads inputs.data (calibration samples)
    needs_labels: ClassVar[bool] = False  # needs inputs.num_classes and labelled data
    uses_scores: ClassVar[bool] = True  # False: ignores the Scores it is given
    needs_pairs: ClassVar[bool] = False  # reads inputs.pairs (clean / corrupted pairs)

    def apply(self, model: nn.Module, scores: Scores | None, inputs: Inputs) -> EditRecord:
        raise NotImplementedError

    def record(self, semantics: str, scores: Scores | None = None, **kw) -> EditRecord:
        """A record naming this editor, its options and the scores it really used."""
        used = (scores.scorer if scores is not None else None) if self.uses_scores else None
        return EditRecord(self.name, self.options_dict(), semantics, scores=used, **kw)
