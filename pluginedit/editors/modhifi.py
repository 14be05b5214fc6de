"""ModHiFi editors (ALGORITHMS.md 4.5-4.6): ``modhifi-p`` structured pruning with compensation
and BN recalibration, ``modhifi-u`` class unlearning by editing HiFi kernel slices."""
from __future__ import annotations

import warnings

import torch
import torch_pruning as tp
from torch import nn

from .. import api
from .bnrecal import recalibrate_bn
from ..capture import batches, collect
from .compensate import DEFAULT_RIDGE, IllConditionedWarning, compensate
from ..core.components import bn_of, output_layers
from ..capture import as_loader
from ..core.errors import EditError, InputError
from ..core.plugin import Editor
from ..core.record import EditRecord
from ..core.scores import Scores
from ..stats import check_labels
from ..scorers.fidelity import channel_scores, gram_requests, grams_by_path, pair_scores
from .prune import ScoresImportance, check_ratio

_CONSUMER_FNS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


def _size(model, example) -> tuple[float, float]:
    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(params), float(macs)


def _step_ratios(ratio: float, steps: int) -> list[float]:
    """Per-step fractions of the remaining channels so that ``steps`` steps remove ``ratio``."""
    r = 1 - (1 - ratio) ** (1 / steps)
    return [r] * steps


class ModHiFiP(Editor):
    """Iterative ModHiFi pruning. Each step: collect input Grams on ``data`` (calibration), score
    channels (``scorer``, default fidelity), remove the lowest channels of every coupled group with
    torch-pruning, apply delta* to each consumer's kept slices, recalibrate BN.

    Options: ``ratio`` (fraction of channels per layer removed in total, default 0.5) or
    ``target`` = "params" | "macs" with ``amount`` (fraction of parameters / MACs to remove, pruning
    ``per_step`` of the channels per step until reached); ``steps`` (for ``ratio``, default 1:
    on the Fashion-MNIST VGG at 50% one step gave 84.3% vs 80.5% for two, errors compound);
    ``compensate`` / ``recalibrate`` (default True); ``ridge``; ``calib_samples`` (2048);
    ``global_pruning``; ``ignored``; ``scorer`` and ``variant`` / ``reduce`` for fidelity."""
    name = "modhifi-p"

    def apply(self, model, scores=None, data=None, example_inputs=None, ratio=0.5, steps=1,
              target="channels", amount=None, per_step=0.1, compensate=True, recalibrate=True,
              ridge=DEFAULT_RIDGE, conv_refit="full", calib_samples=2048, scorer="fidelity", global_pruning=False,
              ignored=None, max_steps=40, num_classes=None, **scorer_options):
        if data is None:
            raise InputError("modhifi-p needs calibration data (data=...)")
        example = example_inputs if example_inputs is not None else next(batches(model, data, None))[0][:1]
        if target not in ("channels", "params", "macs"):
            raise InputError(f"target must be 'channels', 'params' or 'macs', got {target!r}")
        if target == "channels":
            plan = _step_ratios(check_ratio(ratio), int(steps))
        else:
            amount = check_ratio(amount if amount is not None else ratio)
            plan = [check_ratio(per_step)] * int(max_steps)
        params0, macs0 = _size(model, example)
        opts = dict(ratio=ratio, steps=steps, target=target, amount=amount, compensate=compensate,
                    recalibrate=recalibrate, ridge=ridge, conv_refit=conv_refit, scorer=getattr(scorer, "name", scorer),
                    **scorer_options)
        record = EditRecord(self.name, opts, semantics="removed (physical, torch-pruning) + "
                            f"{'delta* ' if compensate else ''}{'+ BN recalibration' if recalibrate else ''}")
        removed_total, ridges, warned = {}, [], 0
        for i, step_ratio in enumerate(plan):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", IllConditionedWarning)
                grams = self._grams(model, data, calib_samples) if compensate or scorer == "fidelity" else {}
                if i == 0 and scores is not None:
                    step_scores = scores
                elif scorer == "fidelity":       # reuse the Grams: one pass over the data per step
                    targets = api.default_targets(model, example)
                    step_scores = Scores(channel_scores(model, example, targets, grams, **scorer_options),
                                         "fidelity", scorer_options)
                else:
                    step_scores = api.score(model, scorer, data=data, max_samples=calib_samples,
                                            example_inputs=example, num_classes=num_classes,
                                            **scorer_options)
                if not compensate:
                    grams = {}
                removed = self._prune_step(model, step_scores, example, step_ratio, grams,
                                           dict(ridge=ridge, conv=conv_refit), global_pruning,
                                           ignored, ridges)
            warned += sum(issubclass(w.category, IllConditionedWarning) for w in caught)
            for k, v in removed.items():
                removed_total.setdefault(k, []).extend(v)
            if recalibrate:
                recalibrate_bn(model, data, max_samples=calib_samples)
            params, macs = _size(model, example)
            done = 1 - (params / params0 if target == "params" else macs / macs0)
            if target != "channels" and done >= amount:
                break
        else:
            if target != "channels":
                raise EditError(f"could not remove {amount:.0%} of the {target} in {max_steps} steps")
        if warned:
            warnings.warn(f"modhifi-p: {warned} compensation solve(s) met an ill-conditioned Gram; "
                          "the ridge was grown there", IllConditionedWarning, stacklevel=2)
        params, macs = _size(model, example)
        record.changes = removed_total
        record.info = {"params_before": params0, "params_after": params, "macs_before": macs0,
                       "macs_after": macs, "steps_run": i + 1, "ill_conditioned_solves": warned,
                       "max_ridge": max(ridges, default=0.0),
                       "topk_reading": "channel score = max over consumers and outputs; lowest pruned"}
        return record

    @staticmethod
    def _grams(model, data, calib_samples):
        return grams_by_path(collect(model, data, gram_requests(model), max_samples=calib_samples))

    @staticmethod
    def _prune_step(model, scores, example, ratio, grams, comp_opts, global_pruning, ignored, ridges):
        """One torch-pruning step; before each group is removed, compensate its consumers."""
        paths = {m: p for p, m in model.named_modules()}
        keep_whole = set(ignored or []) | set(output_layers(model, example))
        bns = {c: model.get_submodule(b) for c, b in bn_of(model).items()}
        pruner = tp.pruner.MetaPruner(
            model, example, importance=ScoresImportance(scores, paths), pruning_ratio=ratio,
            global_pruning=global_pruning,
            ignored_layers=[m for p, m in model.named_modules() if p in keep_whole])
        removed = {}
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                path = paths.get(dep.layer)
                if path in grams and any(dep.pruning_fn == f for f in _CONSUMER_FNS):
                    keep = torch.ones(dep.layer.weight.shape[1], dtype=torch.bool)
                    keep[torch.as_tensor(idxs, dtype=torch.long)] = False
                    ridges.append(compensate(dep.layer, grams[path], keep, bns.get(path), **comp_opts))
                elif path is not None and any(dep.pruning_fn == f for f in
                                              (tp.prune_conv_out_channels, tp.prune_linear_out_channels)):
                    removed.setdefault(path, []).extend(int(i) for i in idxs)
            group.prune()
        if not removed:
            raise EditError("modhifi-p removed no channel (nothing prunable, or ratio too small)")
        return removed


def forget_class_batches(data, forget_class: int, num_classes: int, max_samples: int):
    """Only the samples of ``forget_class`` (ModHiFi-U never sees the retained classes)."""
    xs, seen = [], 0
    for x, y in _labelled(data, num_classes):
        x = x[y == forget_class]
        xs.append(x[: max_samples - seen])
        seen += xs[-1].shape[0]
        if seen >= max_samples:
            break
    if seen == 0:
        raise InputError(f"no sample of class {forget_class} in the data given to modhifi-u")
    x = torch.cat(xs)
    return x, torch.full((x.shape[0],), forget_class, dtype=torch.long)


def _labelled(data, num_classes):
    """Labelled batches without the NaN check of ``capture.batches``: only the forget class's
    samples are ever read, whatever the other samples hold."""
    for x, y in as_loader(data, batch_size=256):
        yield x, check_labels(y, num_classes, x.shape[0])


FRACTIONS = (0.01, 0.02, 0.03, 0.05, 0.08)  # capped at the fixed default: never edits more


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    return (model.eval()(x).argmax(1) == y).float().mean().item()


class ModHiFiU(Editor):
    """ModHiFi-U: forget one class using only its samples. Input Grams of the edited layers are
    collected on forget-class samples; the (output c, input i) kernel slices with the highest
    fidelity scores (the HiFi set, the top ``fraction`` of each layer's pairs) are zeroed (BN
    networks) or negated (LayerNorm / residual networks without BN), finer than whole filters.

    Options: ``fraction`` ("auto": the smallest of ``FRACTIONS`` that brings the accuracy on the
    forget-class samples to ``target`` (default 0.01), else the largest, which spares the
    retained classes; or a number), ``layers`` (paths; default the head and the hidden Linear layers), ``mode``
    (auto | zero | negate), ``samples`` (forget-class samples, 256).
    Scores: see ``forget_scores``."""
    name = "modhifi-u"

    def apply(self, model, scores=None, data=None, forget_class=None, num_classes=None,
              fraction="auto", layers=None, mode="auto", samples=256, target=0.01):
        if data is None or forget_class is None or num_classes is None:
            raise InputError("modhifi-u needs data, forget_class and num_classes")
        if fraction != "auto":
            fraction = check_ratio(fraction)
        if mode == "auto":
            mode = "zero" if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) else "negate"
        if mode not in ("zero", "negate"):
            raise InputError(f"mode must be auto, zero or negate, got {mode!r}")
        x, y = forget_class_batches(data, int(forget_class), int(num_classes), int(samples))
        bns = {c: model.get_submodule(b) for c, b in bn_of(model).items()}
        layers = list(layers or self._default_layers(model, x[:1]))
        grams = grams_by_path(collect(model, (x, y), gram_requests(model, set(layers))))
        order = {p: forget_scores(model.get_submodule(p).weight, grams[p], bns.get(p))
                 .flatten().argsort(descending=True) for p in layers}
        saved = {p: model.get_submodule(p).weight.detach().clone() for p in layers}
        for f in (FRACTIONS if fraction == "auto" else (fraction,)):
            edited = self._edit(model, order, saved, f, mode)
            if fraction != "auto" or _accuracy(model, x, y) <= target:
                break
        record = EditRecord(self.name, dict(forget_class=forget_class, fraction=f, layers=list(layers),
                                            mode=mode, target=target),
                            semantics=f"{mode} HiFi kernel slices W[c, i]", changes=edited,
                            saved={f"{p}.weight": w for p, w in saved.items()})
        record.info = {"forget_samples": int(x.shape[0]), "slices_edited": record.num_changed(),
                       "fraction": f}
        return record

    @staticmethod
    @torch.no_grad()
    def _edit(model, order, saved, fraction, mode) -> dict[str, list[int]]:
        """Restore the original weights, then zero/negate the top ``fraction`` slices per layer."""
        edited = {}
        for path, idx in order.items():
            layer = model.get_submodule(path)
            layer.weight.copy_(saved[path])
            hifi = idx[:max(1, int(fraction * idx.numel()))]
            w = layer.weight.view(layer.weight.shape[0], layer.weight.shape[1], -1)
            c, i = hifi // layer.weight.shape[1], hifi % layer.weight.shape[1]
            w[c, i] = 0 if mode == "zero" else -w[c, i]
            edited[path] = hifi.tolist()
        return edited

    @staticmethod
    def _default_layers(model, example):
        """The classifier head and the hidden Linear layers before it: on these small CNNs the
        forget-class HiFi slices concentrate there (editing BN convs moved every class's BN
        input mean and cost 10-50 points of retained accuracy in our measurements)."""
        heads = output_layers(model, example)
        hidden = [p for p, m in model.named_modules() if isinstance(m, nn.Linear) and p not in heads]
        return hidden + heads


def forget_scores(weight, gram, bn=None) -> torch.Tensor:
    """HiFi score of each slice (c, i) for the forget class. With a following BN, the forget-class
    contributions are centred with the *population* mean the BN keeps (its running mean), so the
    score is the share of output c's forget-specific deviation that slice i carries, in BN units:
    (E_f[y_c a_ci] - m_c E_f[a_ci]) / var_c. Without a BN: the uncentred share R_ci / E||Y_c||^2."""
    co, ci = weight.shape[:2]
    w = weight.detach().double().cpu().reshape(co, ci, -1)
    u = (gram.second_moment() @ w.reshape(co, -1).T).T.reshape(co, ci, -1)
    r = (w * u).sum(-1)                                               # E_f[y_c a_ci]
    mean_a = (w * gram.mean.reshape(ci, -1)).sum(-1)                  # E_f[a_ci]
    if bn is None:
        return r
    m, v = bn.running_mean.double().cpu(), bn.running_var.double().cpu()
    g = bn.weight.detach().double().cpu().abs() if bn.weight is not None else torch.ones_like(m)
    return (r - m[:, None] * mean_a) * (g.square() / (v + bn.eps))[:, None]
