"""Rectification (ALGORITHMS.md 6): rewrite one layer's key -> value map so that corrupted inputs
(a trigger, a spurious artefact) behave like their cleansed versions.

``rank-one`` is the static variant: one rank-r edit of one layer (default: the last feature
layer). ``rectify`` is the dynamic loop (Algorithm 1): locate the layer with the largest
editability (layer-wise integrated gradients), edit it, keep the edit if clean accuracy on
``data`` drops by at most ``max_drop`` or roll it back and try the next layer, until every
corrupted input gets its label or the budget is spent. Keys are the corrupted inputs' features at
the layer, values the clean inputs' outputs; the key statistics C = E[k k^T] come from the same
streaming Gram the fidelity scorer uses.

Values at the layer's own output make the map linear and the closed form exact (the default).
With ``values="block"`` they are read after the block's non-linearity (BN + ReLU, a residual add,
``scorers.keys.block_output``) and Lambda is optimised by Adam on the L1 distance there, W moving
only along the edit directions D (``projected_edit``; Santurkar et al.'s projected optimisation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..capture import default_targets, model_device
from ..core.components import eval_mode, get_module
from ..core.errors import EditError, InputError
from ..core.outputs import output
from ..core.plugin import COUNT, FRACTION, NONNEGATIVE, POSITIVE, Editor, option
from ..core.record import EditRecord
from ..evaluate import accuracy, predictions
from ..linalg import closed_form, edit_directions, rank_r_update
from ..scorers.fidelity import collect_grams
from ..scorers.keys import block_output, flat_weight, layer_keys
from ..scorers.layer_ig import editability, layer_integrated_gradients


def key_statistics(model, paths, data, max_samples: int) -> dict[str, torch.Tensor]:
    """{path: C = E[k k^T]} over ``data`` in one pass."""
    return {p: g.second_moment() for p, g in collect_grams(model, data, paths, max_samples).items()}


def _edit_rows(model, path: str, clean, corrupted):
    """(keys [P, D], values [P, O], rows to fit) of layer ``path``: corrupted keys, clean values,
    the rows whose value the corruption moves (pixels it does not reach only constrain the fit)."""
    keys, _ = layer_keys(model, path, corrupted)
    _, values = layer_keys(model, path, clean)
    k, v = keys.reshape(-1, keys.shape[-1]), values.reshape(-1, values.shape[-1])
    resid = (v - k @ flat_weight(get_module(model, path)).T).norm(dim=1)
    select = resid > 0.05 * resid.max()
    if not bool(select.any()):
        raise InputError(
            f"layer {path!r} sees no difference between the clean and corrupted inputs"
        )
    return k, v, select


def _apply(model, path: str, delta: torch.Tensor, rank: int, record: EditRecord) -> None:
    module = get_module(model, path)
    if not torch.isfinite(delta).all():
        raise InputError(
            f"the rank-{rank} edit of {path!r} is not finite (degenerate key statistics)"
        )
    record.saved.setdefault(f"{path}.weight", module.weight.detach().clone())
    with torch.no_grad():
        module.weight += delta.to(module.weight.dtype).reshape(module.weight.shape)
    record.changes.setdefault(path, []).append(rank)


def rank_one_edit(
    model,
    path: str,
    clean,
    corrupted,
    c: torch.Tensor,
    rank: int,
    record: EditRecord,
    block: dict | None = None,
) -> None:
    """Edit layer ``path`` in place so its corrupted keys map to the clean values: the closed
    form, or with ``block`` (``projected_edit``'s options) the projected optimisation."""
    k, v, select = _edit_rows(model, path, clean, corrupted)
    w = flat_weight(get_module(model, path))
    if block is None:
        delta = rank_r_update(w, k, v, c.to(k.device), rank, select)
    else:
        d = edit_directions(k[select], c.to(k.device), rank)
        delta = projected_edit(
            model, path, clean, corrupted, d, closed_form(w, k[select], v[select], d), **block
        )
    _apply(model, path, delta, rank, record)


def projected_edit(
    model,
    path: str,
    clean,
    corrupted,
    d: torch.Tensor,
    lam0: torch.Tensor,
    value_module: str | None = None,
    steps: int = 200,
    lr: float = 0.05,
) -> torch.Tensor:
    """dW = Lambda D^T minimising the L1 distance between the block output (``block_output``) on
    the corrupted inputs and on the clean ones, over the positions where they differ (the concept
    mask). Lambda starts at the closed form ``lam0`` [O, r]; Adam's step is ``lr`` times
    the RMS of Lambda0. Only Lambda is a parameter, so every iterate lies on W + span(D^T): the set
    Santurkar et al. project onto every 10 steps."""
    module = get_module(model, path)
    w0, d = module.weight.detach(), d.to(module.weight)
    lam = lam0.to(d).detach().clone()  # [O, r]
    with torch.no_grad(), eval_mode(model):
        target, vp = block_output(model, path, clean, value_module)
        before, _ = block_output(model, path, corrupted, vp)
    diff = (target - before).abs().sum(1, keepdim=True)
    region = (diff > 0.05 * diff.max()).to(target.dtype).expand_as(target)
    lam.requires_grad_(True)
    opt = torch.optim.Adam(
        [lam], lr=lr * float(lam.detach().square().mean().sqrt().clamp_min(1e-8))
    )
    with torch.enable_grad(), eval_mode(model):  # BN reads, never updates, its statistics
        for _ in range(steps):
            out, _ = block_output(model, path, corrupted, vp, w0 + (lam @ d.T).reshape(w0.shape))
            loss = ((out - target).abs() * region).sum() / region.sum().clamp_min(1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (lam @ d.T).detach()


def last_feature_layer(model, inputs) -> str:
    """The last conv layer (the static variant's choice), else the last layer but the head."""
    targets = default_targets(model, inputs.example, inputs.num_classes)
    convs = [p for p in targets if isinstance(get_module(model, p), torch.nn.Conv2d)]
    return (convs or targets)[-1]


def _pairs_on(model, pairs):
    dev = model_device(model)
    return pairs.clean.to(dev), pairs.corrupted.to(dev), pairs.y.to(dev)


@torch.no_grad()
def label_logits(model, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """F(x) and F(x~) [n]: the label's logit on the clean and on the corrupted inputs."""
    clean, corrupted, y = _pairs_on(model, pairs)
    f = lambda x: output(model, x).gather(-1, y[:, None])[:, 0]  # noqa: E731
    return f(clean), f(corrupted)


def agreeing(model, pairs) -> torch.Tensor:
    """[n] whether each corrupted input is predicted as its clean version is (behaving like the
    clean input is the aim, whether or not the model gets that one right)."""
    clean, corrupted, _ = _pairs_on(model, pairs)
    return (predictions(model, corrupted) == predictions(model, clean)).cpu()


def rectified(model, pairs) -> float:
    """Fraction of corrupted inputs predicted as their clean versions are."""
    return float(agreeing(model, pairs).float().mean())


def rectification_reached(
    name: str, model, pairs, before: torch.Tensor, record: EditRecord, fail: bool
) -> None:
    """Record how much of the goal the edit reached: the pairs to rectify (corrupted predicted
    unlike clean before the edit) and those rectified now. With ``fail``, an edit that
    rectified none of them raises (the model is restored): a no-op must not pass as an edit."""
    after = agreeing(model, pairs)
    todo, fixed = int((~before).sum()), int((~before & after).sum())
    record.info |= {
        "rectified_before": float(before.float().mean()),
        "rectified": float(after.float().mean()),
        "pairs_to_fix": todo,
        "pairs_fixed": fixed,
    }
    if fail and todo and not fixed:
        raise EditError(
            f"{name}: rectified none of the {todo} pair(s) whose corrupted input the model "
            "predicts unlike the clean one; the model is unchanged (try a higher rank "
            "(-o rank=N, up to the number of pairs), values='block', another layer, or the "
            "'rectify' editor, which locates the layer)"
        )


@dataclass(frozen=True)
class ValueOptions:
    values: Literal["layer", "block"] = option(
        "layer",
        "where values are read: the layer's output (closed form) or after its block's "
        "non-linearity (projected optimisation)",
    )
    value_module: str | None = option(
        None,
        "values='block': the module whose output is the value "
        "(default: the first activation module after the layer)",
    )
    edit_steps: int = option(
        200, "values='block': Adam steps of the projected optimisation", **COUNT
    )
    edit_lr: float = option(
        0.05, "values='block': Adam step relative to the closed form's RMS", **POSITIVE
    )

    def block(self) -> dict | None:
        return (
            None
            if self.values == "layer"
            else {"value_module": self.value_module, "steps": self.edit_steps, "lr": self.edit_lr}
        )


@dataclass(frozen=True)
class RankOneOptions(ValueOptions):
    layer: str | None = option(None, "layer path to edit (default: the last feature layer)")
    rank: int = option(1, "rank of the edit", **COUNT)
    max_samples: int = option(2048, "samples of data for the key statistics", **COUNT)


class RankOne(Editor):
    """Static rectification: one rank-r key -> value edit of one layer."""

    name = "rank-one"
    kind = "rectify"
    needs_data = True
    needs_pairs = True
    uses_scores = False
    Options = RankOneOptions

    def apply(self, model, scores, inputs):
        opts = self.options
        layer = opts.layer or last_feature_layer(model, inputs)
        c = key_statistics(model, [layer], inputs.data, opts.max_samples)[layer]
        clean, corrupted, _ = _pairs_on(model, inputs.pairs)
        record = self.record("rank-r weight update", info={"layer": layer})
        before = agreeing(model, inputs.pairs)
        rank_one_edit(model, layer, clean, corrupted, c, opts.rank, record, opts.block())
        rectification_reached(self.name, model, inputs.pairs, before, record, fail=True)
        return record


@dataclass(frozen=True)
class RectifyOptions(ValueOptions):
    layers: list[str] | None = option(
        None, "candidate layer paths (default: every conv / linear but the head)"
    )
    rank: int = option(1, "rank of each edit", **COUNT)
    steps: int = option(20, "integrated-gradient steps", **COUNT)
    max_edits: int = option(12, "edits tried (kept or rolled back)", **COUNT)
    max_drop: float = option(
        0.01, "largest clean-accuracy drop on data an edit may cause", **FRACTION
    )
    max_samples: int = option(
        2048, "samples of data for key statistics and the accuracy check", **COUNT
    )
    gap: float = option(
        0.25,
        "edit until every pair keeps at most this fraction of its initial gap F(x) - F(x~)",
        **NONNEGATIVE,
    )


class Rectify(Editor):
    """Dynamic rectification: locate (IG editability), edit, check, keep or roll back; edits
    continue until every pair keeps at most ``gap`` of its initial gap or ``max_edits`` are
    spent, and the edit fails (model untouched) unless every corrupted input gets its label."""

    name = "rectify"
    kind = "rectify"
    needs_data = True
    needs_labels = True
    needs_pairs = True
    uses_scores = False
    Options = RectifyOptions

    def apply(self, model, scores, inputs):
        opts = self.options
        layers = list(opts.layers or default_targets(model, inputs.example, inputs.num_classes))
        stats = key_statistics(model, layers, inputs.data, opts.max_samples)
        base = accuracy(model, inputs.data, inputs.num_classes, max_samples=opts.max_samples)[0]
        record = self.record(
            "rank-r weight updates", info={"edits": [], "clean_accuracy_before": base}
        )
        tried, gap0, before = 0, self._gap(model, inputs.pairs), agreeing(model, inputs.pairs)
        record.info["gap_before"] = float(gap0.max())
        while not self._done(model, inputs.pairs, gap0) and tried < opts.max_edits and layers:
            layer = self._locate(model, layers, inputs.pairs, stats)
            trial = EditRecord("trial")
            rank_one_edit(
                model,
                layer,
                *_pairs_on(model, inputs.pairs)[:2],
                stats[layer],
                opts.rank,
                trial,
                opts.block(),
            )
            acc = accuracy(model, inputs.data, inputs.num_classes, max_samples=opts.max_samples)[0]
            kept = acc >= base - opts.max_drop
            record.info["edits"].append({"layer": layer, "clean_accuracy": acc, "kept": kept})
            tried += 1
            layers.remove(layer)  # its best rank-r step is spent (or refused): locate elsewhere
            if not kept:
                trial.undo(model)
                continue
            record.absorb(trial)
        rectification_reached(self.name, model, inputs.pairs, before, record, fail=False)
        record.info["gap_after"] = float(self._gap(model, inputs.pairs).max())
        if (
            record.info["rectified"] < 1.0
        ):  # the gap target is the aim; every pair rectified is required
            raise InputError(
                f"rectify: {record.info['rectified']:.0%} of the corrupted inputs rectified, gap "
                f"{record.info['gap_after']:.3g} of {record.info['gap_before']:.3g} left after "
                f"{tried} edits (max_edits={opts.max_edits}, max_drop={opts.max_drop}); the model "
                "is unchanged"
            )
        return record

    @staticmethod
    def _gap(model, pairs) -> torch.Tensor:
        clean, corrupted = label_logits(model, pairs)
        return clean - corrupted

    def _done(self, model, pairs, gap0) -> bool:
        """Every corrupted input gets its label and keeps at most ``gap`` of its initial gap."""
        return rectified(model, pairs) == 1.0 and bool(
            (self._gap(model, pairs) <= self.options.gap * gap0.abs()).all()
        )

    def _locate(self, model, layers, pairs, stats) -> str:
        clean, corrupted, y = _pairs_on(model, pairs)
        maps = {p: [] for p in layers}
        for i in range(len(y)):
            m, _ = layer_integrated_gradients(
                model, layers, clean[i], corrupted[i], int(y[i]), self.options.steps
            )
            for p in layers:
                maps[p].append(m[p])
        score = {p: editability(model, p, maps[p], corrupted, stats[p]) for p in layers}
        return max(score, key=score.get)
