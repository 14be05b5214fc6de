"""Mergeable sufficient statistics of activations; their hot loops call ``pluginedit.kernels``."""
from .base import Statistic, check_activations, check_labels
from .moments import ChannelMoments, chan_merge

__all__ = ["Statistic", "ChannelMoments", "chan_merge", "check_activations", "check_labels"]
