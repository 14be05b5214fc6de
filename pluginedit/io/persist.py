"""save / load of edited models (see the package docstring)."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from ..core.errors import InputError
from ..core.record import EditRecord
from ..editors._tp import replay_steps
from .manifest import FORMAT, MANIFEST, WEIGHTS, read_manifest, sha256, versions, write_manifest
from .models import STEPS_ATTR, build, load_state, set_source, source_of


def _history(records) -> list[dict]:
    records = [records] if isinstance(records, EditRecord) else list(records or [])
    return [r.summary() for r in records]


def save(model: nn.Module, path: str | Path, records=(), source: dict | None = None) -> Path:
    """Write ``model`` to the folder ``path`` (created): weights, manifest, edit history.
    ``source`` describes the dense architecture; models from ``load_model``/``load`` and the
    zoo remember theirs. Structural edits are taken from the model (every physical edit made
    through pluginedit is recorded on it)."""
    source = source or source_of(model)
    if source is None:
        raise InputError("cannot save: how to build this model's architecture is unknown; pass "
                         "source={'kind': 'factory', 'factory': 'pkg.module:fn', 'args': {...}} "
                         "or load it with pluginedit.load_model")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    # Clones: safetensors refuses tensors that share memory (tied weights are stored twice and
    # tied again by the architecture on load).
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS
    save_file(state, str(weights), metadata={"format": "pt"})   # transformers reads it too
    extra = ("transformers",) if source.get("kind") == "transformers" else ()
    write_manifest(folder, {
        "format": FORMAT, "source": source, "steps": list(model.__dict__.get(STEPS_ATTR, [])),
        "history": _history(records), "versions": versions(*extra),
        "transformers_from_pretrained": _write_config(model, folder) if extra else False,
        "weights": {"file": WEIGHTS, "bytes": weights.stat().st_size, "sha256": sha256(weights)}})
    return folder


def _write_config(model: nn.Module, folder: Path) -> bool:
    """Write config.json beside the weights when the edited model's config describes it, so
    plain ``transformers.AutoModel.from_pretrained(folder)`` loads it too. BERT-family configs
    derive the head size from hidden_size / num_attention_heads, so a model with heads removed
    cannot be described (transformers >= 5 has no pruned_heads); it reloads with pe.load."""
    config = getattr(model, "config", None)
    heads = {m.num_attention_heads for m in model.modules() if hasattr(m, "attention_head_size")}
    if config is None or heads - {getattr(config, "num_attention_heads", None)}:
        return False
    config.save_pretrained(folder)
    return True


def load(path: str | Path) -> nn.Module:
    """The model saved in ``path``, in eval mode, or an ``InputError`` naming the problem."""
    folder = Path(path)
    manifest = read_manifest(folder)
    model = build(manifest["source"])
    try:
        replay_steps(model, manifest["steps"])
    except InputError as e:
        raise InputError(f"{folder / MANIFEST}: {e} (a manifest for another architecture?)") from e
    state = load_file(str(folder / WEIGHTS))
    load_state(model, state, str(folder / WEIGHTS))
    set_source(model, manifest["source"], manifest["steps"])
    return model.eval()

