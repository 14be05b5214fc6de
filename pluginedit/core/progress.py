"""Progress bars for the long steps (training, calibration passes, per-layer editing, COAR
masks). A step shows its bar when its own ``progress`` flag is set, or when the caller asked for
bars around it with ``shown(True)``: the command line turns them on once for a whole command,
so editors and scorers need no flag of their own to show their passes."""

from __future__ import annotations

import contextlib
import contextvars

from tqdm.auto import tqdm

_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("pluginedit_progress", default=False)


def wanted(flag: bool | None = None) -> bool:
    """Whether a step shows its bar: its own flag, else what ``shown`` set around it."""
    return bool(flag) or _SHOWN.get()


@contextlib.contextmanager
def shown(on: bool = True):
    """Within the block, every step shows its bar (``on``) or only those asked by flag."""
    token = _SHOWN.set(bool(on))
    try:
        yield
    finally:
        _SHOWN.reset(token)


def bar(iterable=None, *, desc: str, total: int | None = None, progress: bool | None = None):
    """A tqdm bar that vanishes when done (the command's summary line says what ran)."""
    return tqdm(iterable, total=total, desc=desc, disable=not wanted(progress), leave=False)
