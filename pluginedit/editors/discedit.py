"""DisCEdit editors (ALGORITHMS.md §3.4-3.5): statistics are recomputed on the partially edited
model layer by layer, so each layer is judged by what it sees after the earlier edits.

Both zero conv weight, conv bias and the following BN's affine, so an edited channel emits
exactly 0: masking and physical removal then give the same function (no BN constant survives
to be folded into the next layer).
"""
from __future__ import annotations

import copy
import math

import torch
import torch_pruning as tp
from torch import nn

from ..api import _example
from ..capture import batches, collect
from ..core.components import get_module, groups, output_layers, size_of
from ..capture import Split
from ..core.errors import InputError
from ..capture.hookpoints import resolve, resolve_auto
from ..capture import Request
from ..core.plugin import Editor
from ..core.record import EditRecord
from ..scorers.witness import witness_scores
from ..stats.class_moments import ClassMoments
from .mask import zero_components


def _layer_scores(model, layer, data, num_classes, hook, gamma, max_samples, batch_size,
                  active_only=False, **witness):
    """Witness scores [C] of one layer's channels on the model as it is now. ``active_only``
    zeroes the score of channels less active (larger exp(-gamma ||A||)) on the target class
    than on the rest: removing those would not remove the class's evidence."""
    module, where = resolve_auto(model, layer) if hook == "auto" else resolve(model, layer, hook)
    req = Request(module, ClassMoments(size_of(get_module(model, layer)), num_classes, gamma=gamma), where)
    stat = collect(model, data, [req], num_classes, batch_size, max_samples, stop_early=True)[req.key]
    r = witness_scores(stat, **witness)
    if active_only:
        k = witness["target_class"]
        n_rest, s_rest = stat.rest()
        e_k, e_rest = stat.sums[k, :, 4] / stat.count[k], s_rest[k, :, 4] / n_rest[k]
        r = torch.where(e_k < e_rest, r, torch.zeros_like(r))
    return r


@torch.no_grad()
def _class_accuracy(model, data, k, num_classes, o) -> float:
    """Accuracy on the samples of class ``k`` among the first ``max_samples`` of ``data``."""
    hit = n = 0
    model.eval()
    for x, y in batches(model, data, num_classes, o["batch_size"], o["max_samples"]):
        sel = y == k
        if sel.any():
            hit += int((model(x[sel]).argmax(1) == k).sum())
            n += int(sel.sum())
    if n == 0:
        raise InputError(f"the data has no samples of class {k}")
    return hit / n


def _conv_layers(model, example) -> list[str]:
    heads = set(output_layers(model, example))
    return [p for p, m in groups(model).items() if isinstance(m, nn.Conv2d) and p not in heads]


class DisCEditU(Editor):
    """Class forgetting. Per chosen layer (default: the last ``num_layers`` conv layers), score
    every channel by the raw-moment witness bound of exp(-gamma ||A||) for the forgotten class
    vs the rest, and zero the most discriminative ones: the top ``m`` (an int, or a fraction of
    the layer when < 1) with ``select='top_m'``, those above mean + ``z`` std with
    ``select='zscore'``, or with ``select='adaptive'`` the fewest top channels (at most ``m``)
    that bring the forgotten class's accuracy on ``data`` to ``forget_target`` — layers are then
    visited deepest first and the edit stops once the target is met. ``finetune_epochs`` > 0 then fine-tunes on the retained classes
    (edited channels are re-zeroed afterwards, so they stay removed)."""
    name = "discedit-u"
    defaults = {"layers": None, "num_layers": 2, "hook": "auto", "select": "adaptive", "m": 0.5,
                "forget_target": 0.02, "z": 1.5, "gamma": 1.0, "active_only": True, "method": "fisher",
                "features": "linear", "max_samples": 4096,
                "batch_size": 256, "finetune_epochs": 0, "finetune_data": None, "finetune_lr": 5e-4}

    def apply(self, model, scores, data=None, forget_class=None, num_classes=None, **kw):
        o = {**self.defaults, **self.options, **kw}
        unknown = set(o) - set(self.defaults) - {"example_inputs"}
        if unknown:
            raise InputError(f"unknown options for {self.name!r}: {sorted(unknown)}")
        if data is None or forget_class is None or num_classes is None:
            raise InputError("discedit-u needs data, forget_class and num_classes")
        layers = o["layers"] or _conv_layers(model, _example(data))[-int(o["num_layers"]):]
        record = EditRecord(self.name, {k: v for k, v in o.items() if k != "finetune_data"},
                            "zeroed weight+bias+bn affine", info={"forget_class": forget_class, "skipped": []})
        adaptive = o["select"] == "adaptive"
        for layer in (list(reversed(layers)) if adaptive else layers):
            r = _layer_scores(model, layer, data, num_classes, o["hook"], o["gamma"], o["max_samples"],
                              o["batch_size"], o["active_only"], method=o["method"],
                              features=o["features"], aggregation="ovr_min", target_class=forget_class)
            idx = self._adaptive(model, layer, r, data, forget_class, num_classes, o) if adaptive else self._select(r, o)
            if not idx:   # guard: the authors' [-0:] slice would select every filter
                record.info["skipped"].append(layer)
                continue
            zero_components(model, {layer: idx}, True, record)
            if adaptive and _class_accuracy(model, data, forget_class, num_classes, o) <= o["forget_target"]:
                break
        if o["finetune_epochs"]:
            self._finetune(model, data, forget_class, record, o)
        return record

    @staticmethod
    def _select(r: torch.Tensor, o: dict) -> list[int]:
        if o["select"] == "top_m":
            m = o["m"]
            n = math.ceil(m * len(r)) if m < 1 else int(m)
            n = min(n, len(r) - 1)   # never empty a layer entirely
            n = min(n, int((r > 0).sum()))   # a channel with score 0 carries nothing of the class
            return torch.argsort(r, descending=True, stable=True)[:n].tolist() if n > 0 else []
        if o["select"] == "zscore":
            keep = r > r.mean() + o["z"] * r.std()
            return keep.nonzero().squeeze(1).tolist()
        raise InputError(f"unknown select {o['select']!r}; known: top_m, zscore")

    def _adaptive(self, model, layer, r, data, k, num_classes, o) -> list[int]:
        """Binary search for the fewest top channels of ``layer`` reaching ``forget_target``."""
        order = self._select(r, {**o, "select": "top_m"})
        lo, hi = 1, len(order)
        if hi == 0:
            return []
        while lo < hi:
            mid = (lo + hi) // 2
            trial = copy.deepcopy(model)
            zero_components(trial, {layer: order[:mid]}, True, EditRecord("trial"))
            if _class_accuracy(trial, data, k, num_classes, o) <= o["forget_target"]:
                hi = mid
            else:
                lo = mid + 1
        return order[:lo]

    @staticmethod
    def _finetune(model, data, forget_class, record, o):
        from ..contrib.train import fit
        split = o["finetune_data"] or data
        if not isinstance(split, Split):
            raise InputError("fine-tuning needs a Split (pass finetune_data)")
        fit(model, split.subset(exclude=[forget_class]), int(o["finetune_epochs"]), lr=o["finetune_lr"])
        changes = {k: list(v) for k, v in record.changes.items()}
        zero_components(model, changes, True, EditRecord("refit"))


def uncoupled_layers(model, example) -> list[str]:
    """Conv/linear layers (not the head) whose out-channels can be removed alone: torch-pruning's
    group for them contains no other out-channel pruning (no residual add ties them)."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    heads = set(output_layers(model, example))
    out = []
    for path, layer in groups(model).items():
        if path in heads:
            continue
        fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
        group = dg.get_pruning_group(layer, fn, idxs=[0])
        outs = [d for d, _ in group if d.pruning_fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels)]
        if len(outs) == 1:
            out.append(path)
    return out


def remove_zeroed(model, example, indices: dict[str, list[int]]) -> None:
    """Physically remove the given (already zeroed) out-channels with torch-pruning."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    for path, idx in indices.items():
        if not idx:
            continue
        layer = get_module(model, path)
        fn = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
        dg.get_pruning_group(layer, fn, idxs=sorted(idx)).prune()


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


class DisCEditSP(Editor):
    """Structured pruning. Layer by layer (first to last), score channels with the witness bound
    (``method``, ``features``, ``aggregation``, ``hook``) on the model pruned so far, then
    ``allocation='uniform'``: drop the ``ratio`` lowest of each layer; ``'threshold'``: drop
    channels with s/max(s) <= rho * mean(s/max(s)) (TVSPrune's rule), repeated while the
    accuracy on ``eval_data`` stays >= ``acc_floor`` (rho shrinks by ``rho_step`` when it does
    not), up to ``max_iter`` rounds or ``target_sparsity`` (fraction of parameters removed).
    ``physical`` removes the channels with torch-pruning; otherwise they stay zeroed."""
    name = "discedit-sp"
    defaults = {"ratio": 0.3, "allocation": "uniform", "rho": 0.5, "rho_step": 0.025,
                "acc_floor": None, "eval_data": None, "max_iter": 10, "target_sparsity": None,
                "method": "fisher", "features": "poly", "aggregation": "ovr_min", "hook": "conv",
                "gamma": 1.0, "layers": None, "max_samples": 2048, "batch_size": 256, "physical": True}

    def apply(self, model, scores, data=None, num_classes=None, example_inputs=None, **kw):
        o = {**self.defaults, **self.options, **kw}
        unknown = set(o) - set(self.defaults)
        if unknown:
            raise InputError(f"unknown options for {self.name!r}: {sorted(unknown)}")
        if data is None or num_classes is None:
            raise InputError("discedit-sp needs labelled data and num_classes")
        if o["allocation"] not in ("uniform", "threshold"):
            raise InputError(f"unknown allocation {o['allocation']!r}; known: uniform, threshold")
        if o["allocation"] == "uniform" and not 0 < o["ratio"] < 1:
            raise InputError(f"ratio must lie in (0, 1), got {o['ratio']}")
        example = example_inputs if example_inputs is not None else _example(data)
        layers = o["layers"] or uncoupled_layers(model, example)
        before = _params(model)
        if o["allocation"] == "threshold" and o["acc_floor"] is not None:
            masks, info = self._iterate(model, layers, data, num_classes, o)
        else:
            masks, info = self._one_pass(model, layers, data, num_classes, o, o["rho"]), {}
        record = EditRecord(self.name, {k: v for k, v in o.items() if k != "eval_data"},
                            "zeroed weight+bias+bn affine" + (", then removed (torch-pruning)" if o["physical"] else ""),
                            info={**info, "layers": layers, "params_before": before})
        zero_components(model, masks, True, record)
        if o["physical"]:
            remove_zeroed(model, example, masks)
            record.saved.clear()   # a physical removal cannot be undone by restoring tensors
        record.info["params_after"] = _params(model)
        record.info["fraction_removed"] = 1 - record.info["params_after"] / before
        return record

    def _one_pass(self, model, layers, data, num_classes, o, rho) -> dict[str, list[int]]:
        """Zero channels layer by layer on ``model`` (statistics after earlier layers' edits)."""
        masks = {}
        for layer in layers:
            r = _layer_scores(model, layer, data, num_classes, o["hook"], o["gamma"], o["max_samples"],
                              o["batch_size"], method=o["method"], features=o["features"],
                              aggregation=o["aggregation"])
            idx = self._choose(r, o, rho)
            if idx:
                zero_components(model, {layer: idx}, True, EditRecord("step"))
                masks[layer] = idx
        return masks

    @staticmethod
    def _choose(r: torch.Tensor, o: dict, rho: float) -> list[int]:
        if o["allocation"] == "uniform":
            n = int(o["ratio"] * len(r))
            return torch.argsort(r, stable=True)[:n].tolist()
        top = r.max()
        rn = r / top if top > 0 else torch.zeros_like(r)
        drop = (rn <= rho * rn.mean()).nonzero().squeeze(1).tolist()
        if len(drop) >= len(r):      # keep the best channel: never empty a layer
            drop.remove(int(r.argmax()))
        return drop

    def _iterate(self, model, layers, data, num_classes, o):
        """IterTVSPrune's loop with a max-iteration and a target-sparsity stop."""
        from ..report import accuracy
        if o["eval_data"] is None:
            raise InputError("the accuracy-floor loop needs eval_data (a held-out Split)")
        before, rho = _params(model), o["rho"]
        work = copy.deepcopy(model)
        accepted: dict[str, set] = {}
        history = []
        for _ in range(int(o["max_iter"])):
            if rho <= 0:
                break
            cand = copy.deepcopy(work)
            masks = self._one_pass(cand, layers, data, num_classes, o, rho)
            acc = accuracy(cand, o["eval_data"], num_classes)[0]
            merged = {k: set(accepted.get(k, ())) | set(masks.get(k, ())) for k in set(accepted) | set(masks)}
            removed = sum(len(v) for v in merged.values())
            history.append({"rho": rho, "accuracy": acc, "channels_zeroed": removed})
            if acc >= o["acc_floor"]:
                grew = removed > sum(len(v) for v in accepted.values())
                work, accepted = cand, merged
                if not grew or (o["target_sparsity"] and self._sparsity(model, layers, accepted) >= o["target_sparsity"]):
                    break
            else:
                rho -= o["rho_step"]
        return {k: sorted(v) for k, v in accepted.items()}, {"rounds": history}

    @staticmethod
    def _sparsity(model, layers, masks) -> float:
        """Fraction of parameters removed if ``masks`` were removed (measured on a pruned copy)."""
        trial = copy.deepcopy(model)
        example = None
        for m in trial.modules():
            if isinstance(m, nn.Conv2d):
                example = torch.zeros(1, m.in_channels, 28, 28)
                break
        remove_zeroed(trial, example, {k: sorted(v) for k, v in masks.items()})
        return 1 - _params(trial) / _params(model)
