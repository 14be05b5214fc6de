"""The manifest of a saved model: a JSON file checked field by field before anything is built."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from importlib import metadata
from pathlib import Path

from ..core.errors import InputError
from ..core.files import loads_json, written_whole

FORMAT = "pluginedit-model/1"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
MANIFEST_LIMIT = 64 << 20  # a manifest of steps for an LLM is a few MB
_FIELDS = {
    "format": str,
    "source": dict,
    "steps": list,
    "history": list,
    "versions": dict,
    "weights": dict,
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions(*dists: str) -> dict[str, str]:
    out = {}
    for d in ("pluginedit", "torch", "torch-pruning", "safetensors", *dists):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(folder: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, default=str)
    with written_whole(folder / MANIFEST) as tmp:  # a reader never sees half a manifest
        tmp.write_text(text)


def _indices(idxs) -> bool:
    return isinstance(idxs, list) and all(
        isinstance(j, int) and not isinstance(j, bool) and j >= 0 for j in idxs
    )


def _check_step(i: int, step, where: Path) -> None:
    if isinstance(step, dict) and "parameter" in step:  # a bare nn.Parameter pruned
        dim = step.get("dim")
        if (
            isinstance(step["parameter"], str)
            and isinstance(dim, int)
            and not isinstance(dim, bool)
            and dim >= 0
            and _indices(step.get("idxs"))
        ):
            return
        raise InputError(
            f"{where}: step {i} is malformed (a parameter step needs the parameter's name, a "
            f"non-negative dim and non-negative integer idxs), got {str(step)[:200]}"
        )
    if (
        isinstance(step, dict)
        and isinstance(step.get("module"), str)
        and isinstance(step.get("attrs"), dict)
    ):
        if all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for v in step["attrs"].values()
        ):
            return
    ok = (
        isinstance(step, dict)
        and isinstance(step.get("module"), str)
        and isinstance(step.get("fn"), str)
        and _indices(step.get("idxs"))
    )
    if not ok:
        raise InputError(
            f"{where}: step {i} is malformed (need module, and fn with non-negative "
            f"integer idxs or attrs of integers), got {str(step)[:200]}"
        )


def read_inside(folder: Path, name: str, limit: int) -> bytes:
    """The bytes of the regular file ``folder/name``, never through a symbolic link (a save must
    not make the loader read a file elsewhere) and never more than ``limit`` bytes."""
    path = folder / name
    # O_NONBLOCK: opening a FIFO planted in the folder must not wait for a writer
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(f"{path} is missing") from None
    except OSError as e:
        if path.is_symlink():
            raise InputError(
                f"{path} is a symbolic link; a saved model is read only from regular "
                "files inside its folder"
            ) from None
        raise InputError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path} is not a regular file")
        if info.st_size > limit:
            raise InputError(f"{path}: {info.st_size} bytes, more than the {limit} expected")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def parse_manifest(data: bytes, where: Path) -> dict:
    """The manifest's JSON, parsed defensively and validated field by field."""
    manifest = loads_json(data, where)
    if not isinstance(manifest, dict):
        raise InputError(f"{where}: expected a JSON object")
    for name, kind in _FIELDS.items():
        if not isinstance(manifest.get(name), kind):
            raise InputError(f"{where}: field {name!r} missing or not a {kind.__name__}")
    if manifest["format"] != FORMAT:
        raise InputError(
            f"{where}: format {manifest['format'][:80]!r}, this pluginedit reads {FORMAT!r}"
        )
    for i, step in enumerate(manifest["steps"]):
        _check_step(i, step, where)
    _check_weights_field(manifest["weights"], where)
    return manifest


def digest(folder: str | Path) -> str:
    """The SHA-256 of a save's manifest, which holds the weights' SHA-256: it pins the whole save
    (``pluginedit.load(folder, sha256=digest)`` refuses any other manifest or weights)."""
    return hashlib.sha256(read_inside(Path(folder), MANIFEST, MANIFEST_LIMIT)).hexdigest()


def read_manifest(folder: str | Path, pin: str | None = None) -> dict:
    """The manifest of a saved model, validated; with ``pin``, only if its SHA-256 is that."""
    folder = Path(folder)
    where = folder / MANIFEST
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (a saved pluginedit model is a folder)")
    if not where.exists() and not where.is_symlink():
        raise InputError(f"{folder} is not a saved pluginedit model: {MANIFEST} is missing")
    data = read_inside(folder, MANIFEST, MANIFEST_LIMIT)
    if pin is not None:
        if not isinstance(pin, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", pin):
            raise InputError(f"sha256 must be 64 hexadecimal digits, got {str(pin)[:80]!r}")
        got = hashlib.sha256(data).hexdigest()
        if got != pin.lower():
            raise InputError(
                f"{where}: SHA-256 {got[:16]}… is not the pinned {pin[:16].lower()}… "
                "(a different or modified save)"
            )
    return parse_manifest(data, where)


def _check_weights_field(weights: dict, where: Path) -> None:
    if (
        weights.get("file") != WEIGHTS
        or not isinstance(weights.get("sha256"), str)
        or not isinstance(weights.get("bytes"), int)
        or weights["bytes"] < 0
    ):
        raise InputError(f"{where}: field 'weights' must name {WEIGHTS} with its bytes and sha256")


def read_weights(folder: Path, manifest: dict) -> bytes:
    """The weights file's bytes, checked against the manifest's size and SHA-256; the bytes
    checked are the bytes returned (no window to swap the file between check and read)."""
    path, expected = folder / WEIGHTS, manifest["weights"]
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path} is missing")
    data = read_inside(folder, WEIGHTS, expected["bytes"])
    if len(data) != expected["bytes"]:
        raise InputError(
            f"{path}: {len(data)} bytes, the manifest says {expected['bytes']} "
            "(truncated or replaced)"
        )
    got = hashlib.sha256(data).hexdigest()
    if got != expected["sha256"]:
        raise InputError(
            f"{path}: SHA-256 {got[:16]}… does not match the manifest's "
            f"{expected['sha256'][:16]}… (the file was modified)"
        )
    return data
