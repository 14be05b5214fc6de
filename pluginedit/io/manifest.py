"""The manifest of a saved model: a JSON file checked field by field before anything is built."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from ..core.errors import InputError
from ..core.files import written_whole

FORMAT = "pluginedit-model/1"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
_FIELDS = {"format": str, "source": dict, "steps": list, "history": list, "versions": dict,
           "weights": dict}


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
    with written_whole(folder / MANIFEST) as tmp:    # a reader never sees half a manifest
        tmp.write_text(text)


def _check_step(i: int, step, where: Path) -> None:
    if isinstance(step, dict) and isinstance(step.get("module"), str) and isinstance(step.get("attrs"), dict):
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in step["attrs"].values()):
            return
    ok = (isinstance(step, dict) and isinstance(step.get("module"), str)
          and isinstance(step.get("fn"), str) and isinstance(step.get("idxs"), list)
          and all(isinstance(j, int) and not isinstance(j, bool) and j >= 0 for j in step["idxs"]))
    if not ok:
        raise InputError(f"{where}: step {i} is malformed (need module, and fn with non-negative "
                         f"integer idxs or attrs of integers), got {str(step)[:200]}")


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a saved model, validated; the weights file checked against its size and
    SHA-256 (a truncated or tampered file never reaches the tensor reader)."""
    folder = Path(folder)
    where = folder / MANIFEST
    if not where.is_file():
        raise InputError(f"{folder} is not a saved pluginedit model: {MANIFEST} is missing")
    try:
        manifest = json.loads(where.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise InputError(f"{where}: expected a JSON object")
    for name, kind in _FIELDS.items():
        if not isinstance(manifest.get(name), kind):
            raise InputError(f"{where}: field {name!r} missing or not a {kind.__name__}")
    if manifest["format"] != FORMAT:
        raise InputError(f"{where}: format {manifest['format']!r}, this pluginedit reads {FORMAT!r}")
    for i, step in enumerate(manifest["steps"]):
        _check_step(i, step, where)
    _check_weights(folder, manifest["weights"], where)
    return manifest


def _check_weights(folder: Path, weights: dict, where: Path) -> None:
    path = folder / WEIGHTS
    if weights.get("file") != WEIGHTS or not isinstance(weights.get("sha256"), str) \
            or not isinstance(weights.get("bytes"), int):
        raise InputError(f"{where}: field 'weights' must name {WEIGHTS} with its bytes and sha256")
    if not path.is_file():
        raise InputError(f"{path} is missing")
    size = path.stat().st_size
    if size != weights["bytes"]:
        raise InputError(f"{path}: {size} bytes, the manifest says {weights['bytes']} (truncated or replaced)")
    digest = sha256(path)
    if digest != weights["sha256"]:
        raise InputError(f"{path}: SHA-256 {digest[:16]}… does not match the manifest's "
                         f"{weights['sha256'][:16]}… (the file was modified)")
