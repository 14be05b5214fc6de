"""Which optional backends exist here: the compiled C++ extension (``pluginedit._C``, built by
setup.py from csrc/; never required: one warning if it is not built) and triton.

``load()`` runs once from ``pluginedit.ops`` after the op modules have defined every op's schema:
the extension only adds kernels to those ops (``TORCH_LIBRARY_IMPL``), it defines none."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path

import torch

EXTENSION = "pluginedit._C"


def _stale(library: str) -> str | None:
    """In a source checkout (editable install): csrc/ops.cpp when it is newer than the built
    library. That file holds the registrations: a build older than it may define op schemas the
    Python side now defines, and loading it would abort the process."""
    ops_cpp = Path(__file__).resolve().parents[2] / "csrc" / "ops.cpp"
    if ops_cpp.is_file() and ops_cpp.stat().st_mtime > os.path.getmtime(library):
        return "csrc/ops.cpp"
    return None


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
    stale = _stale(importlib.util.find_spec(EXTENSION).origin)
    if stale:
        warnings.warn(
            f"pluginedit: the C++ extension (pluginedit._C) is older than {stale} and is not "
            "loaded (an old build may register a different op schema); the statistics ops use "
            "the PyTorch reference (and Triton on CUDA). Rebuild it with "
            "`pip install --no-build-isolation -e .`",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    try:
        # As torchao does: the shared library itself, whose static initialisers run the
        # TORCH_LIBRARY_IMPL registrations (no Python module API needed).
        torch.ops.load_library(importlib.util.find_spec(EXTENSION).origin)
    except (ImportError, OSError) as e:
        warnings.warn(
            f"pluginedit: the C++ extension (pluginedit._C) is built but does not load ({e}); the "
            "statistics ops use the PyTorch reference (and Triton on CUDA). Rebuild it with "
            "`pip install --no-build-isolation -e .`",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


LOADED = False  # set by load()
TRITON = importlib.util.find_spec("triton") is not None
VERBOSE = "PLUGINEDIT_VERBOSE"
CUDA_OPS = ("class_moments",)  # the ops with a CUDA kernel in csrc/ (csrc/<op>_cuda.cu)
log = logging.getLogger("pluginedit.ops")


def load() -> bool:
    """Load the extension once (its kernels register with the ops defined in ops/<op>.py)."""
    global LOADED
    LOADED = LOADED or _load()
    return LOADED


def compiled_kernel(op: str, key: str) -> bool:
    """True when the loaded extension registered ``pluginedit::<op>`` for dispatch key ``key``
    (``CPU`` for the C++ ops, ``CUDA`` for the .cu ones)."""
    if not LOADED:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"pluginedit::{op}", key)
    except RuntimeError:  # the op is not defined at all
        return False


def summary() -> str:
    """One line: which backends this process can use."""
    cuda = torch.cuda.is_available()
    parts = [
        "reference: yes",
        f"C++ (csrc): {'yes' if LOADED else 'no (extension not built)'}",
        "CUDA (csrc): "
        + ("yes" if compiled_kernel("class_moments", "CUDA") else "no (not compiled in)"),
        f"Triton: {'yes' if TRITON and cuda else 'installed, no GPU' if TRITON else 'no'}",
    ]
    return "pluginedit.ops backends: " + "; ".join(parts)


def announce() -> None:
    """The one line at import: to the "pluginedit.ops" logger (INFO), and to stderr with
    PLUGINEDIT_VERBOSE=1; `python -m pluginedit.ops` prints the full table."""
    if os.environ.get(VERBOSE, "0") not in ("", "0"):
        warnings.warn(summary(), stacklevel=3)
    else:
        log.info(summary())
