"""save / load of edited models (see the package docstring)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from torch import nn

from ..core.errors import InputError
from ..core.files import written_whole
from ..core.record import EditRecord
from ..graph.replay import replay_steps
from .hf import plain_copy, source_of_class
from .manifest import (
    FORMAT,
    MANIFEST,
    WEIGHTS,
    read_manifest,
    read_weights,
    sha256,
    versions,
    write_manifest,
)
from .models import (
    build,
    history_of,
    is_bound,
    load_state,
    set_history,
    set_source,
    source_of,
    steps_of,
)
from .trust import trusted_specs


def _check_records(model: nn.Module, records) -> None:
    """Records passed to ``save`` must describe edits made on this model: the history written
    is the model's own (every ``pluginedit.edit`` appends to it), never a claim about another."""
    records = [records] if isinstance(records, EditRecord) else list(records or [])
    for i, r in enumerate(records):
        if not isinstance(r, EditRecord):
            raise InputError(f"records[{i}] is a {type(r).__name__}, not an EditRecord")
        if not is_bound(model, r):
            raise InputError(
                f"records[{i}] (editor {r.editor!r}) was not made on this model by "
                "pluginedit.edit; save writes the history of the model it saves"
            )


def _state_metadata(model: nn.Module) -> dict[str, int]:
    """The state dict's per-module versions (``_metadata``), which some modules' loaders need."""
    meta = getattr(model.state_dict(), "_metadata", {}) or {}
    return {k: v["version"] for k, v in meta.items() if isinstance(v.get("version"), int)}


def _dtype(state: dict) -> str | None:
    kinds = {str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)


def save(model: nn.Module, path: str | Path, records=(), source: dict | None = None) -> Path:
    """Write ``model`` to the folder ``path`` (created): weights, manifest, edit history.
    ``source`` describes the dense architecture; models from ``load_model``/``load`` and the
    zoo remember theirs. Structural edits and the edit history are taken from the model (every
    edit made through ``pluginedit.edit`` is recorded on it); ``records``, if given, must be
    edits of this model. ``digest(folder)`` is the SHA-256 that pins the save."""
    source = source or source_of(model) or (None if steps_of(model) else source_of_class(model))
    if source is None:
        raise InputError(
            "cannot save: how to build this model's architecture is unknown; pass "
            "source={'kind': 'factory', 'factory': 'pkg.module:fn', 'args': {...}} "
            "or load it with pluginedit.load_model"
        )
    _check_records(model, records)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"cannot save to {folder}: it is a file, and a save is a folder")
    folder.mkdir(parents=True, exist_ok=True)
    # Clones: safetensors refuses tensors that share memory (tied weights are stored twice and
    # tied again by the architecture on load).
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS
    with written_whole(weights) as tmp:  # never half a weights file, even on SIGINT
        save_file(state, str(tmp), metadata={"format": "pt"})  # transformers reads it too
    extra = ("transformers",) if source.get("kind") == "transformers" else ()
    plain, why = plain_copy(model, folder, state) if extra else (None, None)
    write_manifest(
        folder,
        {
            "format": FORMAT,
            "source": source,
            "steps": steps_of(model),
            "history": history_of(model),
            "versions": versions(*extra),
            "dtype": _dtype(state),
            "state_metadata": _state_metadata(model),
            "transformers_from_pretrained": plain,
            **({"transformers_from_pretrained_note": why} if why else {}),
            "weights": {
                "file": WEIGHTS,
                "bytes": weights.stat().st_size,
                "sha256": sha256(weights),
            },
        },
    )
    return folder


def load(path: str | Path, trusted=None, sha256: str | None = None) -> nn.Module:
    """The model saved in ``path``, in eval mode, or an ``InputError`` naming the problem.

    Nothing in the folder chooses code to run: the architecture is rebuilt only by an
    allow-listed constructor (``pluginedit.io.trust``) or a factory named in ``trusted``
    (``["mypkg.nets:make"]``). Only ``manifest.json`` and ``model.safetensors`` are read, never
    through a symbolic link; every step is checked before a tensor moves. ``sha256`` pins the
    save (``pluginedit.io.digest`` of the folder you trust)."""
    folder = Path(path)
    trusted = trusted_specs(trusted)
    manifest = read_manifest(folder, sha256)
    where = folder / MANIFEST
    state = _weights(folder, manifest)
    try:
        model = build(manifest["source"], trusted)
    except InputError as e:
        raise InputError(f"{where}: {e}") from e
    try:
        replay_steps(model, manifest["steps"])
    except InputError as e:
        raise InputError(f"{where}: bad step: {e} (a manifest for another architecture?)") from e
    _match_dtypes(model, state)
    load_state(model, state, str(folder / WEIGHTS))
    set_source(model, manifest["source"], manifest["steps"])
    set_history(model, manifest["history"])
    return model.eval()


def _weights(folder: Path, manifest: dict) -> OrderedDict:
    """The checked weights as a state dict carrying the saved per-module versions."""
    data = read_weights(folder, manifest)
    try:
        state = OrderedDict(load_bytes(data))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{folder / WEIGHTS}: not a readable safetensors file ({e})") from e
    meta = manifest.get("state_metadata") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, int) for v in meta.values()):
        raise InputError(
            f"{folder / MANIFEST}: field 'state_metadata' must map module paths to versions"
        )
    state._metadata = OrderedDict((k, {"version": v}) for k, v in meta.items())
    return state


def _match_dtypes(model: nn.Module, state: dict) -> None:
    """Give each floating tensor of the rebuilt model the dtype it was saved in (a bfloat16
    model loads as bfloat16); ``.data`` keeps tied parameters tied."""
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(
        model.named_buffers(remove_duplicate=False)
    )
    for name, t in tensors.items():
        saved = state.get(name)
        if (
            saved is not None
            and t.is_floating_point()
            and saved.is_floating_point()
            and t.dtype != saved.dtype
        ):
            t.data = t.data.to(saved.dtype)
