"""save / load of edited models (see the package docstring)."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file
import torch
from torch import nn

from ..core.components import kind_of, unit_consumer
from ..core.errors import InputError
from ..core.files import written_whole
from ..core.record import EditRecord
from ..editors._tp import replay_steps
from .manifest import FORMAT, MANIFEST, WEIGHTS, read_manifest, sha256, versions, write_manifest
from .models import STEPS_ATTR, build, load_state, load_weights, set_source, source_of


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
    with written_whole(weights) as tmp:         # never half a weights file, even on SIGINT
        save_file(state, str(tmp), metadata={"format": "pt"})   # transformers reads it too
    extra = ("transformers",) if source.get("kind") == "transformers" else ()
    write_manifest(folder, {
        "format": FORMAT, "source": source, "steps": list(model.__dict__.get(STEPS_ATTR, [])),
        "history": _history(records), "versions": versions(*extra),
        "transformers_from_pretrained": _write_transformers(model, folder) if extra else None,
        "weights": {"file": WEIGHTS, "bytes": weights.stat().st_size, "sha256": sha256(weights)}})
    return folder


def _write_transformers(model: nn.Module, folder: Path) -> str | None:
    """Make the save loadable by plain ``transformers.AutoModel.from_pretrained`` too; returns the
    folder to load from ("." or "transformers"), or None. FFN pruning is described by the config
    (a uniform ``intermediate_size``). Removed heads are not: BERT-family configs derive the head
    size from hidden_size / num_attention_heads and transformers >= 5 has no ``pruned_heads``, so
    a copy with the removed heads as zero slices goes to ``transformers/`` (a zero query, key and
    value head with zero output-projection columns adds exactly nothing)."""
    config = getattr(model, "config", None)
    ffn = {m.out_features for p, m in model.named_modules() if p.endswith("intermediate.dense")}
    if config is None or ffn - {getattr(config, "intermediate_size", None)}:
        return None
    atts = {p: m for p, m in model.named_modules() if kind_of(m) == "attn_head"}
    full = getattr(config, "num_attention_heads", None)
    if all(a.num_attention_heads == full for a in atts.values()):
        config.save_pretrained(folder)
        return "."
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    for path, att in atts.items():
        width = full * att.attention_head_size
        for name in ("query", "key", "value"):
            for part in ("weight", "bias"):
                key = f"{path}.{name}.{part}"
                if key in state:
                    state[key] = _pad(state[key], 0, width)
        out = f"{unit_consumer(model, path)}.weight"
        state[out] = _pad(state[out], 1, width)
    sub = folder / "transformers"
    config.save_pretrained(sub)
    save_file(state, str(sub / WEIGHTS), metadata={"format": "pt"})
    return "transformers"


def _pad(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim).contiguous()


def load(path: str | Path) -> nn.Module:
    """The model saved in ``path``, in eval mode, or an ``InputError`` naming the problem."""
    folder = Path(path)
    manifest = read_manifest(folder)
    try:
        model = build(manifest["source"])
    except InputError as e:
        raise InputError(f"{folder / MANIFEST}: {e}") from e
    try:
        replay_steps(model, manifest["steps"])
    except InputError as e:
        raise InputError(f"{folder / MANIFEST}: {e} (a manifest for another architecture?)") from e
    load_state(model, load_weights(folder / WEIGHTS), str(folder / WEIGHTS))
    set_source(model, manifest["source"], manifest["steps"])
    return model.eval()

