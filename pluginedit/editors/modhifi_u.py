"""ModHiFi-U (ALGORITHMS.md 4.6): forget one class from its own samples only, by zeroing (BN
networks) or negating (LayerNorm networks) the kernel slices W[c, i] of highest fidelity.

Default (chosen on the tune half of benchmarks/forget_family.py): the HiFi slices of the
classifier head's forget row W[k, :] only, negated, as large a share as it takes (up to all of
them). That edit can only lower class k's logit, so no other class's prediction gets worse; it
forgets at the output, the features still carry the class. The paper's edit of every output's
slices, here in the head and the hidden Linear layers (``rows='all', hidden=True,
max_fraction=0.08``) forgets as well but costs up to 30 points of retained accuracy on models it
was not tuned on; see benchmarks/results/forget_family.md."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..capture import as_loader, head_layers
from ..core.components import bn_of, eval_mode
from ..core.errors import InputError
from ..core.outputs import output
from ..core.plugin import COUNT, FRACTION, Editor, option
from ..scorers.fidelity import collect_grams
from ..stats import check_labels

FRACTIONS = (
    0.01,
    0.02,
    0.03,
    0.05,
    0.08,
    0.12,
    0.16,
    0.2,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
)  # tried up to max_fraction


def forget_class_batches(data, forget_class: int, num_classes: int, max_samples: int):
    """Only the samples of ``forget_class`` (ModHiFi-U never sees the retained classes). Read
    through ``as_loader``, not ``capture.batches``: batches checks and converts every row it yields,
    and the rows of the other classes must not be read at all (no finite check on them either)."""
    xs, seen = [], 0
    for x, y in as_loader(data, batch_size=256):
        y = check_labels(y, num_classes, x.shape[0])
        xs.append(x[y == forget_class][: max_samples - seen])
        seen += xs[-1].shape[0]
        if seen >= max_samples:
            break
    if seen == 0:
        raise InputError(f"no sample of class {forget_class} in the data given to modhifi-u")
    x = torch.cat(xs)
    return x, torch.full((x.shape[0],), forget_class, dtype=torch.long)


@torch.no_grad()
def class_accuracy(model, x, y) -> float:
    with eval_mode(model):
        return (output(model, x).argmax(1) == y).float().mean().item()


def mean_contributions(weight, gram) -> torch.Tensor:
    """E_f[a_ci]: the mean contribution of input i to output c on the forget samples."""
    co, ci = weight.shape[:2]
    w = weight.detach().double().cpu().reshape(co, ci, -1)
    return (w * gram.mean.cpu().reshape(ci, -1)).sum(-1)


def forget_scores(weight, gram, bn=None) -> torch.Tensor:
    """HiFi score of each slice (c, i) for the forget class. With a following BN, the forget-class
    contributions are centred with the *population* mean the BN keeps (its running mean), so the
    score is the share of output c's forget-specific deviation that slice i carries, in BN units:
    (E_f[y_c a_ci] - m_c E_f[a_ci]) / var_c. Without a BN: the uncentred share R_ci / E||Y_c||^2."""
    co, ci = weight.shape[:2]
    w = weight.detach().double().cpu().reshape(co, ci, -1)
    u = (gram.second_moment().cpu() @ w.reshape(co, -1).T).T.reshape(co, ci, -1)
    r = (w * u).sum(-1)  # E_f[y_c a_ci]
    if bn is None:
        return r
    m, v = bn.running_mean.double().cpu(), bn.running_var.double().cpu()
    g = bn.weight.detach().double().cpu().abs() if bn.weight is not None else torch.ones_like(m)
    return (r - m[:, None] * mean_contributions(weight, gram)) * (g.square() / (v + bn.eps))[
        :, None
    ]


@dataclass(frozen=True)
class ModHiFiUOptions:
    fraction: float | Literal["auto"] = option(
        "auto",
        "share of each layer's slices edited; auto: the smallest of 1% .. max_fraction that "
        "forgets the class on its own samples",
        above=0,
        at_most=1,
    )
    layers: list[str] | None = option(
        None, "layer paths (default: the head and, with hidden, the hidden Linear layers)"
    )
    hidden: bool = option(False, "default layers include the hidden Linear layers before the head")
    rows: Literal["all", "forget"] = option(
        "forget",
        "in the classifier head, slices W[c, i] of every class c (the paper) or only those of the "
        "forget class's row W[k, :] that raise its logit (fraction = share of those)",
    )
    max_fraction: float = option(1.0, "auto fraction: the largest share tried", above=0, at_most=1)
    mode: Literal["auto", "zero", "negate"] = option(
        "auto",
        "zero or negate the slices; auto: zero in BN nets, negate in LayerNorm nets and in the "
        "head's forget row (rows='forget')",
    )
    samples: int = option(256, "forget-class samples read", **COUNT)
    target: float = option(
        0.01, "auto fraction: accuracy on the forget samples to reach", **FRACTION
    )
    check: Literal["samples", "held-out"] = option(
        "samples",
        "auto fraction: check on the forget samples the Grams come from, or on a held-out half "
        "of them (Grams from the other half)",
    )

    def fractions(self) -> list[float]:
        """The shares tried in turn: the fixed one, or FRACTIONS up to max_fraction."""
        if self.fraction != "auto":
            return [self.fraction]
        return [f for f in FRACTIONS if f <= self.max_fraction] or [self.max_fraction]


class ModHiFiU(Editor):
    """Forget one class using only its samples: input Grams of the edited layers on those
    samples, then the top slices by ``forget_scores`` zeroed or negated; reversible."""

    name = "modhifi-u"
    kind = "forget"
    needs_data = True
    needs_labels = True
    uses_scores = False
    Options = ModHiFiUOptions

    def apply(self, model, scores, inputs):
        opts = self.options
        base = opts.mode
        if base == "auto":
            base = (
                "zero" if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) else "negate"
            )
        x, y = forget_class_batches(
            inputs.data, inputs.forget_class, inputs.num_classes, opts.samples
        )
        bns = {c: model.get_submodule(b) for c, b in bn_of(model).items()}
        heads = head_layers(model, x[:1])
        layers = list(opts.layers or self._default_layers(model, heads, opts.hidden))
        xc, yc = (x[1::2], y[1::2]) if opts.check == "held-out" else (x, y)
        if opts.check == "held-out":
            if len(y) < 2:
                raise InputError("modhifi-u check='held-out' needs at least 2 forget-class samples")
            x, y = x[0::2], y[0::2]
        grams = collect_grams(model, (x, y), set(layers))
        rows = set(heads) if opts.rows == "forget" else set()  # layers edited in row k only
        order = {
            p: self._order(
                model.get_submodule(p).weight,
                grams[p],
                bns.get(p),
                inputs.forget_class if p in rows else None,
            )
            for p in layers
        }
        saved = {p: model.get_submodule(p).weight.detach().clone() for p in layers}
        # the forget row feeds no normalisation: negating its slices pushes logit k down twice as
        # far as zeroing (zeroing all of them left > 5 % of the class on 9 of 80 family edits)
        modes = {p: "negate" if p in rows and opts.mode == "auto" else base for p in layers}
        for f in opts.fractions():
            edited = self._edit(model, order, saved, f, modes)
            left = class_accuracy(model, xc, yc)
            if opts.fraction != "auto" or left <= opts.target:
                break
        else:
            warnings.warn(
                f"modhifi-u: class {inputs.forget_class} still at {left:.1%} on its samples at "
                f"max_fraction={opts.max_fraction}; raise max_fraction or add layers",
                stacklevel=2,
            )
        mode = "/".join(sorted(set(modes.values())))
        record = self.record(
            f"{mode} HiFi kernel slices W[c, i]",
            changes=edited,
            saved={f"{p}.weight": w for p, w in saved.items()},
        )
        record.info = {
            "forget_class": inputs.forget_class,
            "forget_samples": int(x.shape[0]),
            "slices_edited": record.num_changed(),
            "fraction": f,
            "mode": mode,
            "forgotten_accuracy": left,
        }
        return record

    @staticmethod
    def _order(weight, gram, bn, row: int | None) -> torch.Tensor:
        """Flat slice indices, highest HiFi score first: all of them, or only those of output
        ``row`` that score positive and raise it on average (E_f[a_ci] > 0). A head edit confined
        to the forget class's row removes only contributions that push its logit up, so for
        non-negative features no other class's prediction can get worse; editing every row of the
        head moved the other logits too and cost up to 5.7 points of retained accuracy on the model
        family (benchmarks/forget_family.py)."""
        scores = forget_scores(weight, gram, bn)
        if row is None:
            return scores.flatten().argsort(descending=True)
        order = scores[row].argsort(descending=True)
        up = (scores[row] > 0) & (mean_contributions(weight, gram)[row] > 0)
        return row * scores.shape[1] + order[up[order]]

    @staticmethod
    @torch.no_grad()
    def _edit(model, order, saved, fraction, modes) -> dict[str, list[int]]:
        """Restore the original weights, then zero/negate the top ``fraction`` slices per layer."""
        edited = {}
        for path, idx in order.items():
            layer = model.get_submodule(path)
            layer.weight.copy_(saved[path])
            hifi = idx[: max(1, int(fraction * idx.numel()))]
            w = layer.weight.view(layer.weight.shape[0], layer.weight.shape[1], -1)
            c, i = hifi // layer.weight.shape[1], hifi % layer.weight.shape[1]
            w[c, i] = 0 if modes[path] == "zero" else -w[c, i]
            edited[path] = hifi.tolist()
        return edited

    @staticmethod
    def _default_layers(model, heads: list[str], hidden: bool = True):
        """The classifier head and the hidden Linear layers before it: on these small CNNs the
        forget-class HiFi slices concentrate there (editing BN convs moved every class's BN
        input mean and cost 10-50 points of retained accuracy in our measurements)."""
        before = [
            p for p, m in model.named_modules() if isinstance(m, nn.Linear) and p not in heads
        ]
        return before + heads if hidden else heads
