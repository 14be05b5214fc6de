"""Which optional backends exist here: the compiled C++ extension (``pluginedit._C``, built by
setup.py from csrc/; never required: one warning if it is not built) and triton."""

from __future__ import annotations

import importlib
import importlib.util
import warnings

EXTENSION = "pluginedit._C"


def _load() -> bool:
    """Load the C++ extension (loading it runs its TORCH_LIBRARY registrations); False, with one
    warning saying why, when it is not built or does not load."""
    try:
        built = importlib.util.find_spec(EXTENSION) is not None
    except ImportError:
        built = False
    if not built:
        warnings.warn(
            "pluginedit: the C++ extension (pluginedit._C) is not built; the statistics ops use "
            "the PyTorch reference (and Triton on CUDA). Build it with "
            "`pip install --no-build-isolation -e .`",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    try:
        importlib.import_module(EXTENSION)
    except ImportError as e:
        warnings.warn(
            f"pluginedit: the C++ extension (pluginedit._C) is built but does not load ({e}); the "
            "statistics ops use the PyTorch reference (and Triton on CUDA). Rebuild it with "
            "`pip install --no-build-isolation -e .`",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


LOADED = _load()
TRITON = importlib.util.find_spec("triton") is not None
