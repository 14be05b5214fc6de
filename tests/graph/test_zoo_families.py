"""One small random-initialised model per image-classification family that transformers ships
(issue 24, ``pluginedit.contrib.vision_zoo``): l1 + prune and modhifi-p remove parameters and
keep the output shape, and the pruned model saves without ``source=`` and reloads with
``pe.load`` to 1e-5; families torch-pruning misreads stop with a clear error within 60 s, the
model untouched, never a hang and never a raw exception (modhifi-p keeps the groups torch-pruning
misreads whole and prunes the rest, ``pluginedit.graph.probe``). ``benchmarks/zoo.py`` runs the same models next to
Torch-Pruning's own MetaPruner and ModHiFi-P."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import pytest
import torch

import pluginedit as pe
from pluginedit.contrib import vision_zoo
from pluginedit.core.errors import EditError
from pluginedit.graph import groups

# Families torch-pruning cannot prune (the peer fails on them too), with the error they stop on.
CANNOT = {
    "cvt": r"torch-pruning cannot trace this model \(IndexError",
    "hiera": r"torch-pruning cannot trace this model \(ZeroDivisionError",
    # focal modulation: the group's index mappings never close (a hang without the budget)
    "focalnet": r"torch-pruning could not build the dependency groups of "
    r"'focalnet\.encoder\.stages\.\d\.layers\.0\.modulation' within 60 s",
}


# The families whose whole plan no longer runs (the classifier reads cat(cls token, mean of the
# patch tokens) in DINOv2; Swin's patch merging concatenates four slices of one tensor and
# torch-pruning maps one; LeViT's groups run past a layer's width): prune and modhifi-p prune
# them with the groups that break the forward kept whole (their roots in
# record.info["kept_whole"]; the peer fails on each) ...
MISREAD = {"dinov2", "dinov2-registers", "levit", "pvt", "pvt-v2", "segformer", "swin"}
# ... and those torch-pruning cannot build groups for at all
MODHIFI_CANNOT = {
    "focalnet": CANNOT["focalnet"],
    "hiera": r"torch-pruning failed while building the dependency group of "
    r"'hiera\.encoder\.stages\.0\.layers\.0\.attn\.qkv' \(ZeroDivisionError",
}
SLOW = {"mobilevit", "mobilevitv2"}  # seconds of torch-pruning group building per MetaPruner run


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _prune(model, x):
    scores = pe.score(model, "l1", example_inputs=x)
    return pe.edit(model, "prune", scores, example_inputs=x, ratio=0.5)


@pytest.mark.parametrize("family", sorted(vision_zoo.FAMILIES))
def test_l1_prune_saves_and_reloads_or_stops_clearly(family, tmp_path):
    model, x = vision_zoo.build(family)
    dense, n0 = _logits(model, x), _params(model)
    t = time.monotonic()
    if family in CANNOT:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(EditError, match=CANNOT[family]):
            _prune(model, x)
        assert time.monotonic() - t < 60
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        return
    record = _prune(model, x)
    out = _logits(model, x)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    assert _params(model) < (n0 if family in MISREAD else 0.9 * n0)
    assert bool(record.info["kept_whole"]) == (family in MISREAD)
    pe.save(model, tmp_path / "m")  # no source=: derived from the transformers class
    back = pe.load(tmp_path / "m")
    assert type(back) is type(model)
    assert float((_logits(back, x) - out).abs().max()) <= 1e-5


def _modhifi(model, x):
    calib = torch.randn(16, *x.shape[1:], generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kept-whole groups, ill-conditioned random-init solves
        return pe.edit(
            model,
            "modhifi-p",
            data=(calib, torch.zeros(16, dtype=torch.long)),
            ratio=0.5,
            calib_samples=16,
        )


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f
        for f in sorted(vision_zoo.FAMILIES)
    ],
)
def test_modhifi_p_prunes_saves_and_reloads_or_stops_clearly(family, tmp_path):
    model, x = vision_zoo.build(family)
    dense, n0 = _logits(model, x), _params(model)
    t = time.monotonic()
    if family in MODHIFI_CANNOT:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(EditError, match=MODHIFI_CANNOT[family]):
            _modhifi(model, x)
        assert time.monotonic() - t < 60
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        return
    rec = _modhifi(model, x)
    out = _logits(model, x)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    assert _params(model) < 0.9 * n0
    assert bool(rec.info.get("kept_whole")) == (family in MISREAD)
    pe.save(model, tmp_path / "m")
    back = pe.load(tmp_path / "m")
    assert type(back) is type(model)
    assert float((_logits(back, x) - out).abs().max()) <= 1e-5


def test_non_bert_attention_goes_through_the_graph_and_loses_whole_heads():
    """Data2Vec-Vision's blocks have query/key/value and a head count but not BERT's
    ``attention.self`` / ``attention.output.dense`` layout: modhifi-p prunes them through the
    dependency graph (two of four heads, the head count a recorded step), hidden width and FFN
    included, not through the FFN-only transformer path."""
    model, x = vision_zoo.build("data2vec-vision")
    rec = _modhifi(model, x)
    att = model.data2vec_vision.encoder.layer[0].attention.attention
    assert att.query.out_features == 16 and att.num_attention_heads == 2
    assert att.all_head_size == 16
    step = {"module": "data2vec_vision.encoder.layer.0.attention.attention"}
    assert step | {"attrs": {"num_attention_heads": 2, "all_head_size": 16}} in rec.steps
    assert model.data2vec_vision.encoder.layer[0].intermediate.dense.out_features == 32
    assert model.data2vec_vision.embeddings.patch_embeddings.projection.out_channels == 16


def test_attention_blocks_lose_whole_heads_recorded_as_steps():
    model, x = vision_zoo.build("vit")
    rec = _prune(model, x)
    att = model.vit.layers[0].attention
    assert att.q_proj.out_features == 16 and att.head_dim == 8  # 2 of 4 heads of 8 dims
    q = next(
        s
        for s in rec.steps
        if s.get("module") == "vit.layers.0.attention.q_proj"
        and s["fn"] == "prune_linear_out_channels"
    )
    heads = sorted({i // 8 for i in q["idxs"]})
    assert len(heads) == 2 and sorted(q["idxs"]) == [h * 8 + d for h in heads for d in range(8)]
    assert {"module": "vit.layers.0.attention", "attrs": {"num_attention_heads": 2}} in rec.steps
    assert any(s.get("parameter") == "vit.embeddings.cls_token" for s in rec.steps)


def test_the_source_is_the_dense_config_taken_before_the_edit(tmp_path):
    model, x = vision_zoo.build("vit")
    _prune(model, x)
    pe.save(model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "transformers"
    assert manifest["source"]["class"] == "ViTForImageClassification"
    assert manifest["source"]["config"]["hidden_size"] == 32  # dense, as built


def _plain(folder, family) -> torch.Tensor:
    """Logits of ``<class>.from_pretrained(folder)`` in a fresh process (no pluginedit)."""
    cls = vision_zoo.FAMILIES[family][0]
    code = (
        "import os, sys, torch; os.environ['HF_HUB_OFFLINE'] = '1'; import transformers;"
        f"m = transformers.{cls}.from_pretrained({str(folder)!r}).eval();"
        f"x = torch.load({str(folder / 'x.pt')!r}, weights_only=True);"
        f"torch.save(m(x).logits.detach(), {str(folder / 'y.pt')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    return torch.load(folder / "y.pt", weights_only=True)


def test_plain_from_pretrained_loads_a_save_whose_config_describes_the_widths(tmp_path):
    """A ViT halved everywhere (hidden width, heads, FFN): a config says that, so the folder
    loads with plain transformers; a ResNet pruned per layer is not a config: the manifest says
    only pe.load rebuilds it, and no config.json suggests otherwise."""
    model, x = vision_zoo.build("vit")
    _prune(model, x)
    folder = pe.save(model, tmp_path / "vit")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["transformers_from_pretrained"] == "."
    torch.save(x, folder / "x.pt")
    assert float((_plain(folder, "vit") - _logits(model, x)).abs().max()) <= 1e-5
    resnet, xr = vision_zoo.build("resnet")
    _prune(resnet, xr)
    folder = pe.save(resnet, tmp_path / "resnet")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["transformers_from_pretrained"] is None
    assert "pluginedit.load" in manifest["transformers_from_pretrained_note"]
    assert not (folder / "config.json").exists()


def test_a_runaway_group_stops_on_the_time_budget_too(monkeypatch):
    """The dependency cap off, the clock alone stops FocalNet's endless group."""
    model, x = vision_zoo.build("focalnet")
    monkeypatch.setattr(groups, "GROUP_SECONDS", 1.0)
    monkeypatch.setattr(groups, "GROUP_DEPS_PER_NODE", 10**9)
    t = time.monotonic()
    with pytest.raises(EditError, match=r"within 1 s: the group of '.*' grew to \d+ dep"):
        _prune(model, x)
    assert time.monotonic() - t < 30


def test_fidelity_scores_non_bert_attention_through_the_graph():
    # Data2Vec-Vision's attention.attention is not BERT's attention.self: no transformer units,
    # its layers are scored as graph channels (a raw KeyError before)
    from pluginedit.core.components import groups, size_of, transformer_units

    model, x = vision_zoo.build("data2vec-vision")
    assert transformer_units(model) == []
    calib = torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(3))
    scores = pe.score(model, "fidelity", data=(calib, torch.zeros(8, dtype=torch.long)))
    layers = groups(model)
    assert len(scores) > 0 and all(p in layers for p in scores)
    for p in scores:
        v = scores[p]
        assert v.shape == (size_of(layers[p]),) and torch.isfinite(v).all()
