"""Deterministic training and fine-tuning, and a checkpoint cache under the user cache dir."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..capture import Split
from ..core import checks
from ..core.errors import InputError
from ..core.files import written_whole
from ..core.progress import wanted
from ..editors.common.finetune import fit  # noqa: F401  (the one training loop, re-exported)
from ..io.models import load_state, load_weights
from . import zoo
from .data import DataBundle

CACHE_ENV = "PLUGINEDIT_CACHE"
CACHE_VERSION = 1
DEFAULT_EPOCHS = {"digits": 30, "mnist": 3, "fashion-mnist": 4}


def cache_dir() -> Path:
    root = (
        os.environ.get(CACHE_ENV)
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pluginedit"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_hash(split: Split) -> str:
    """SHA-256 of the training tensors: the cache must never serve a model trained on other
    data that happens to share the name and size."""
    h = hashlib.sha256()
    for t in (split.x, split.y):
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _key(arch: str, data: DataBundle, config: dict, epochs: int, seed: int) -> str:
    blob = json.dumps(
        [CACHE_VERSION, arch, data.name, data_hash(data.train), config, epochs, seed],
        sort_keys=True,
        default=list,
    )
    return f"{arch}-{data.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def pretrained(
    arch: str,
    data: DataBundle,
    epochs: int | None = None,
    seed: int = 0,
    config: dict | None = None,
    progress: bool = False,
    retrain: bool = False,
) -> nn.Module:
    """Train ``arch`` on ``data`` (or load the cached checkpoint of the same recipe)."""
    checks.seed(seed)
    checks.number("epochs", epochs, integer=True, at_least=1, optional=True)
    config = config or zoo.default_config(arch, data.name)
    epochs = epochs or DEFAULT_EPOCHS.get(data.name, 5)
    torch.manual_seed(seed)
    model = zoo.build(arch, data.input_shape[0], data.num_classes, **config)
    path = cache_dir() / (_key(arch, data, config, epochs, seed) + ".safetensors")
    if path.exists() and not retrain:
        try:
            load_state(model, load_weights(path), str(path))
        except InputError as e:
            raise InputError(
                f"corrupted cache checkpoint: {e}; delete the file or retrain "
                "(`pluginedit train --retrain`)"
            ) from e
        return model.eval()
    # the bar shows when asked here or around the call (core.progress.shown, the CLI's default)
    fit(model, data.train, epochs, seed=seed, progress=wanted(progress))
    if not all(
        torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()
    ):
        raise InputError(
            f"training {arch} on {data.name} diverged (NaN or Inf weights); not cached"
        )
    with written_whole(path) as tmp:  # an interrupted run leaves no half-written checkpoint
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return model
