"""Mergeable sufficient statistics of activations; their hot loops call ``pluginedit.kernels``."""
from .base import Statistic, check_activations, check_labels
from .ablation import AblationSums
from .gram import Gram
from .moments import ChannelMoments, chan_merge
from .class_moments import ClassMaps, ClassMoments

__all__ = ["Statistic", "AblationSums", "Gram", "ClassMoments", "ClassMaps", "ChannelMoments", "chan_merge", "check_activations", "check_labels"]
