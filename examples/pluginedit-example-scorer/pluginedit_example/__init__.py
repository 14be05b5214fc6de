"""A third-party pluginedit package, written from the plugin guide (docs/pages/plugins.md):

* ``wanda`` (scorer): |W| x input-channel RMS, from ``InputSquares``, a mergeable statistic of
  its own that shares the one pass over the data and merges across processes;
* ``act-rms`` (scorer): the RMS activation of each conv channel, from a built-in
  ``ChannelMoments``;
* ``bn-gamma`` (scorer): |gamma| of the BatchNorm after each conv; needs no data;
* ``scale-lowest`` (editor): scales the lowest-scored components; reversible;
* ``zero-lowest`` (editor): zeroes the lowest-scored channels; reversible.

They are registered through the entry points of ``pyproject.toml``.
"""

from .editors import ScaleLowestEditor, ScaleLowestOptions, ZeroLowestEditor, ZeroLowestOptions
from .scorers import ActRMSScorer, BNGammaScorer, WandaScorer
from .stats import InputSquares

__all__ = [
    "ActRMSScorer",
    "BNGammaScorer",
    "WandaScorer",
    "InputSquares",
    "ScaleLowestEditor",
    "ScaleLowestOptions",
    "ZeroLowestEditor",
    "ZeroLowestOptions",
]
