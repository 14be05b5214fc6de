"""Files written whole or not at all: an interrupted or failed write (SIGINT, a full disk, a
tensor that cannot be serialised) leaves neither a partial file nor a temporary one behind."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def written_whole(path: str | Path):
    """Yield a temporary path next to ``path``; when the block completes it replaces ``path``
    in one rename, when it raises (KeyboardInterrupt included) it is deleted."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
