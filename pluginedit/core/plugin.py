"""The plugin contracts. A scorer turns statistics (or weights, or its own loop) into Scores;
an editor turns Scores into an edited model and an EditRecord."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..capture import Request
from .errors import InputError
from .record import EditRecord
from .scores import Scores

API_VERSION = 1


def _with_defaults(plugin, options: dict) -> dict:
    """Options merged over the plugin's ``defaults``; an unknown option is an error that lists
    the known ones (typos must not be silently ignored)."""
    if plugin.defaults is None:
        return dict(options)
    unknown = set(options) - set(plugin.defaults)
    if unknown:
        raise InputError(f"unknown options for {plugin.name!r}: {sorted(unknown)}; "
                         f"known: {sorted(plugin.defaults)}")
    return {**plugin.defaults, **options}


class Scorer:
    """Subclass, set ``name``, and implement ``score``. Declare statistics in ``requests`` so
    several scorers share one pass over the data; scorers with their own loop (gradients,
    masked forwards) use ``data`` directly in ``score``."""
    name: ClassVar[str] = ""
    api_version: ClassVar[int] = API_VERSION
    needs_data: ClassVar[bool] = False     # needs (x, y) batches at all
    needs_labels: ClassVar[bool] = False   # needs class labels (class-conditional statistics)
    defaults: ClassVar[dict | None] = None  # known options and their defaults (None: accept any)

    def __init__(self, **options):
        self.options = _with_defaults(self, options)

    def requests(self, model: nn.Module, targets: list[str], num_classes: int) -> list[Request]:
        return []

    def score(self, model: nn.Module, targets: list[str], stats: dict, data=None,
              num_classes: int | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class Editor:
    """Subclass, set ``name``, and implement ``apply``. The framework runs ``apply`` under
    ``record.atomic`` so a failure leaves the model untouched."""
    name: ClassVar[str] = ""
    api_version: ClassVar[int] = API_VERSION
    defaults: ClassVar[dict | None] = None

    def __init__(self, **options):
        self.options = _with_defaults(self, options)

    def apply(self, model: nn.Module, scores: Scores | None, **kwargs) -> EditRecord:
        raise NotImplementedError
