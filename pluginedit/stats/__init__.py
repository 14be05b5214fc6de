"""Mergeable sufficient statistics of activations; their hot loops call ``pluginedit.ops``."""

from .ablation import AblationSums
from .base import Statistic, check_activations, check_labels
from .class_moments import ClassMaps, ClassMoments
from .gram import Gram
from .moments import ChannelMoments, chan_merge
from .witness_maps import WitnessMaps

__all__ = [
    "Statistic",
    "AblationSums",
    "Gram",
    "ClassMoments",
    "ClassMaps",
    "WitnessMaps",
    "ChannelMoments",
    "chan_merge",
    "check_activations",
    "check_labels",
]
