"""Small random-initialised image classifiers of the families ``transformers`` ships: one
``XxxForImageClassification`` per family with a config of few layers and narrow widths, so that
each builds, runs, prunes and saves in seconds on a CPU (``benchmarks/zoo.py``,
``tests/graph/test_zoo_families.py``).

``FAMILIES`` maps a family name to ``(class name, config keywords, image size)``; ``build(name)``
returns the model (eval mode, seeded) and an example batch. Nothing is downloaded."""

from __future__ import annotations

import os

import torch

from ..core.errors import InputError

NUM_LABELS = 10
_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
_BEIT = _VIT | {"use_auxiliary_head": False, "drop_path_rate": 0.0}
_SWIN = {
    "image_size": 32,
    "patch_size": 4,
    "embed_dim": 16,
    "depths": [1, 1],
    "num_heads": [2, 4],
    "window_size": 4,
    "drop_path_rate": 0.0,
}
_DINO = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "mlp_ratio": 2,
    "image_size": 32,
    "patch_size": 8,
}
_MIT = {  # PVT-v2 and SegFormer (Mix Transformer encoders)
    "num_encoder_blocks": 2,
    "depths": [1, 1],
    "sr_ratios": [2, 1],
    "hidden_sizes": [16, 32],
    "patch_sizes": [7, 3],
    "strides": [4, 2],
    "num_attention_heads": [1, 2],
    "mlp_ratios": [2, 2],
    "drop_path_rate": 0.0,
}

# family -> (transformers class, config keywords, image size)
FAMILIES: dict[str, tuple[str, dict, int]] = {
    "resnet": (
        "ResNetForImageClassification",
        {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "layer_type": "basic"},
        32,
    ),
    "resnet-bottleneck": (
        "ResNetForImageClassification",
        {"embedding_size": 16, "hidden_sizes": [32, 64], "depths": [1, 1]},
        32,
    ),
    "convnext": (
        "ConvNextForImageClassification",
        {"num_stages": 2, "hidden_sizes": [16, 32], "depths": [1, 1]},
        32,
    ),
    "convnextv2": (
        "ConvNextV2ForImageClassification",
        {"num_stages": 2, "hidden_sizes": [16, 32], "depths": [1, 1]},
        32,
    ),
    "vit": ("ViTForImageClassification", _VIT, 32),
    "deit": ("DeiTForImageClassification", _VIT, 32),
    "vit-msn": ("ViTMSNForImageClassification", _VIT, 32),
    "ijepa": ("IJepaForImageClassification", _VIT, 32),
    "beit": ("BeitForImageClassification", _BEIT, 32),
    "data2vec-vision": ("Data2VecVisionForImageClassification", _BEIT, 32),
    "dinov2": ("Dinov2ForImageClassification", _DINO, 32),
    "dinov2-registers": ("Dinov2WithRegistersForImageClassification", _DINO, 32),
    "swin": ("SwinForImageClassification", _SWIN, 32),
    "swinv2": ("Swinv2ForImageClassification", _SWIN, 32),
    "donut-swin": ("DonutSwinForImageClassification", _SWIN, 32),
    "mobilenet-v1": (
        "MobileNetV1ForImageClassification",
        {"depth_multiplier": 0.25, "image_size": 32},
        32,
    ),
    "mobilenet-v2": (
        "MobileNetV2ForImageClassification",
        {"depth_multiplier": 0.25, "image_size": 32},
        32,
    ),
    "efficientnet": (
        "EfficientNetForImageClassification",
        {
            "image_size": 32,
            "width_coefficient": 0.25,
            "depth_coefficient": 0.25,
            "hidden_dim": 320,
            "num_hidden_layers": 16,
        },
        32,
    ),
    "regnet": (
        "RegNetForImageClassification",
        {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "groups_width": 8},
        32,
    ),
    "bit": (
        "BitForImageClassification",
        {
            "embedding_size": 16,
            "hidden_sizes": [32, 64],
            "depths": [1, 1],
            "num_groups": 4,
        },
        32,
    ),
    "levit": (
        "LevitForImageClassification",
        {
            "image_size": 64,
            "hidden_sizes": [32, 48],
            "num_attention_heads": [2, 3],
            "depths": [1, 1],
            "key_dim": [8, 8],
            "mlp_ratio": [2, 2],
            "attention_ratio": [2, 2],
            "down_ops": [["Subsample", 8, 2, 4, 2, 2]],
        },
        64,
    ),
    "poolformer": (
        "PoolFormerForImageClassification",
        {
            "num_encoder_blocks": 2,
            "depths": [1, 1],
            "hidden_sizes": [16, 32],
            "patch_sizes": [7, 3],
            "strides": [4, 2],
            "padding": [2, 1],
        },
        32,
    ),
    "pvt": (
        "PvtForImageClassification",
        {
            "image_size": 32,
            "num_encoder_blocks": 2,
            "depths": [1, 1],
            "sequence_reduction_ratios": [2, 1],
            "hidden_sizes": [16, 32],
            "patch_sizes": [4, 2],
            "strides": [4, 2],
            "num_attention_heads": [1, 2],
            "mlp_ratios": [2, 2],
        },
        32,
    ),
    "pvt-v2": ("PvtV2ForImageClassification", _MIT, 32),
    "segformer": ("SegformerForImageClassification", _MIT, 32),
    "cvt": (
        "CvtForImageClassification",
        {
            "embed_dim": [16, 32],
            "num_heads": [1, 2],
            "depth": [2, 2],  # a stage's index must be below its depth (transformers 5)
            "patch_sizes": [7, 3],
            "patch_stride": [4, 2],
            "patch_padding": [2, 1],
            "mlp_ratio": [2.0, 2.0],
            "attention_drop_rate": [0.0, 0.0],
            "drop_rate": [0.0, 0.0],
            "drop_path_rate": [0.0, 0.0],
            "qkv_bias": [True, True],
            "cls_token": [False, True],
            "qkv_projection_method": ["dw_bn", "dw_bn"],
            "kernel_qkv": [3, 3],
            "padding_kv": [1, 1],
            "stride_kv": [2, 2],
            "padding_q": [1, 1],
            "stride_q": [1, 1],
        },
        32,
    ),
    "focalnet": (
        "FocalNetForImageClassification",
        {
            "image_size": 32,
            "embed_dim": 16,
            "depths": [1, 1],
            "hidden_sizes": [32, 64],
            "focal_levels": [2, 2],
            "focal_windows": [3, 3],
            "drop_path_rate": 0.0,
        },
        32,
    ),
    "mobilevit": (
        "MobileViTForImageClassification",
        {
            "image_size": 64,
            "hidden_sizes": [16, 24, 32],
            "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64],
            "num_attention_heads": 2,
        },
        64,
    ),
    "mobilevitv2": (
        "MobileViTV2ForImageClassification",
        {"image_size": 64, "width_multiplier": 0.25, "n_attn_blocks": [1, 1, 1]},
        64,
    ),
    "swiftformer": (
        "SwiftFormerForImageClassification",
        {"depths": [1, 1, 1, 1], "embed_dims": [16, 16, 32, 32]},
        32,
    ),
    "hiera": (
        "HieraForImageClassification",
        {
            "image_size": [64, 64],
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [1, 2],
            "num_query_pool": 1,
            "masked_unit_attention": [True, False],
        },
        64,
    ),
}

_SKIPPED = {
    "dinat": "needs the natten package",
    "timm_wrapper": "needs timm",
    "imagegpt": "reads pixel-cluster token ids, not images",
    "perceiver": "not in this sweep (input preprocessors of its own)",
    "shieldgemma2": "a vision-language model",
}


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """The family's model (random weights from ``seed``, eval mode; built by its class, so
    ``pluginedit.save`` derives the source from its config) and an example batch of two images."""
    if name not in FAMILIES:
        raise InputError(f"unknown family {name!r}; known: {sorted(FAMILIES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    cls_name, kw, size = FAMILIES[name]
    cls = getattr(transformers, cls_name)
    torch.manual_seed(seed)
    model = cls(cls.config_class(num_labels=NUM_LABELS, **kw)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    return model, torch.randn(2, 3, size, size, generator=g)
