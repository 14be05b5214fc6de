"""Small members of four ``transformers`` image-classification families sized for 28 px
one-channel images (Fashion-MNIST / MNIST), trained a few epochs on a subset and cached like
the zoo CNNs (``contrib.train``): the trained models of ``benchmarks/trained_families.py``.

``FAMILIES`` maps a family to ``(class name, config keywords, recipe)``; the recipe is the
number of training samples, epochs and the peak learning rate. Each trains in about 1-4
minutes on one CPU core. ``build(name)`` gives the random-initialised model (eval mode);
``trained(name, data)`` the trained one, from the cache when the same recipe ran before."""

from __future__ import annotations

import hashlib
import json
import os

import torch
from safetensors.torch import save_file
from torch import nn

from ..core import checks
from ..core.errors import InputError
from ..core.files import written_whole
from ..editors.common.finetune import fit
from ..io.models import load_state, load_weights
from . import train
from .data import DataBundle

NUM_LABELS = 10
CACHE_VERSION = 2

# family -> (transformers class, config keywords, recipe)
FAMILIES: dict[str, tuple[str, dict, dict]] = {
    "resnet": (
        "ResNetForImageClassification",
        {
            "embedding_size": 24,
            "hidden_sizes": [32, 64],
            "depths": [1, 1],
            "layer_type": "basic",
        },
        {"samples": 30000, "epochs": 4, "lr": 3e-3},
    ),
    "mobilenet-v2": (
        "MobileNetV2ForImageClassification",
        {"depth_multiplier": 0.35, "image_size": 28, "classifier_dropout_prob": 0.0},
        {"samples": 20000, "epochs": 4, "lr": 3e-3},
    ),
    "convnext": (
        "ConvNextForImageClassification",
        {
            "num_stages": 2,
            "hidden_sizes": [32, 64],
            "depths": [2, 2],
            "patch_size": 2,
            "drop_path_rate": 0.0,
        },
        {"samples": 20000, "epochs": 3, "lr": 3e-3},
    ),
    "vit": (
        "ViTForImageClassification",
        {
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "image_size": 28,
            "patch_size": 4,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        {"samples": 30000, "epochs": 4, "lr": 2e-3},
    ),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The family's model for 28 px one-channel images, random weights from ``seed``, eval
    mode (built by its ``transformers`` class, so ``pluginedit.save`` derives its source)."""
    if name not in FAMILIES:
        raise InputError(f"unknown family {name!r}; known: {sorted(FAMILIES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    cls_name, kw, _ = FAMILIES[name]
    cls = getattr(transformers, cls_name)
    torch.manual_seed(checks.seed(seed))
    return cls(cls.config_class(num_labels=NUM_LABELS, num_channels=1, **kw)).eval()


def fingerprint(split) -> str:
    """SHA-256 of the labels and of the images quantised to 256 levels over their range: the
    same for data normalised with any number of threads (``contrib.data`` normalises by a mean
    whose last bits depend on the thread count, which changes ``train.data_hash``)."""
    x, y = split.x.detach().cpu().float(), split.y.detach().cpu()
    lo, hi = x.min(), x.max()
    q = ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)
    h = hashlib.sha256(str((tuple(x.shape), tuple(y.shape))).encode())
    for t in (q, y.contiguous()):
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _key(name: str, data: DataBundle, recipe: dict, seed: int) -> str:
    cls_name, kw, _ = FAMILIES[name]
    blob = json.dumps(
        [CACHE_VERSION, cls_name, kw, data.name, fingerprint(data.train), recipe, seed],
        sort_keys=True,
        default=list,
    )
    return f"family-{name}-{data.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def trained(
    name: str, data: DataBundle, seed: int = 0, progress: bool = False, retrain: bool = False
) -> nn.Module:
    """``build(name, seed)`` trained on the family's recipe (a seeded subset of ``data.train``),
    or its cached checkpoint (``contrib.train.cache_dir``; never committed)."""
    model = build(name, seed)
    if tuple(data.input_shape) != (1, 28, 28):
        raise InputError(f"the families are sized for 1 x 28 x 28 images, got {data.input_shape}")
    recipe = FAMILIES[name][2]
    path = train.cache_dir() / (_key(name, data, recipe, seed) + ".safetensors")
    if path.exists() and not retrain:
        try:
            load_state(model, load_weights(path), str(path))
        except InputError as e:
            raise InputError(f"corrupted cache checkpoint: {e}; delete the file") from e
        return model.eval()
    subset = data.train.subset(recipe["samples"], seed=seed)
    fit(model, subset, recipe["epochs"], lr=recipe["lr"], seed=seed, progress=progress)
    state = model.state_dict()
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise InputError(f"training family {name} diverged (NaN or Inf weights); not cached")
    with written_whole(path) as tmp:  # an interrupted run leaves no half-written checkpoint
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return model.eval()
