"""Files written whole or not at all: an interrupted or failed write (SIGINT, a full disk, a
tensor that cannot be serialised) leaves neither a partial file nor a temporary one behind.
JSON read defensively: a file from elsewhere is a clear error, never a raw exception."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .errors import InputError

_MAX_DIGITS = 20  # every integer a file of ours holds fits in 64 bits


def _int(text: str) -> int:
    if len(text) > _MAX_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def loads_json(data: bytes | str, where) -> object:
    """Parse JSON from a file we did not write ourselves: huge integers, NaN/Infinity, deep
    nesting and bad encodings are an ``InputError`` naming ``where``."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_int=_int, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{where}: not valid JSON ({str(e)[:200]})") from None
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None


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
