"""Which optional backends exist here: the compiled csrc extension (``pluginedit._C``, built by
setup.py from csrc/; never required: one warning if absent) and triton."""
from __future__ import annotations

import importlib.util
import warnings

try:
    from .. import _C  # noqa: F401  (loading the library runs the TORCH_LIBRARY registrations)
    LOADED = True
except ImportError as e:  # never required
    LOADED = False
    warnings.warn(f"pluginedit: compiled ops not loaded ({e}); using the PyTorch/Triton backends. "
                  "Build them with `pip install --no-build-isolation -e .`", RuntimeWarning, stacklevel=2)

TRITON = importlib.util.find_spec("triton") is not None
