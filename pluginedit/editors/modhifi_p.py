"""ModHiFi-P (ALGORITHMS.md 4.5): structured pruning with least-squares compensation of every
consumer of a removed channel and BatchNorm recalibration, without fine-tuning."""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Literal

from ..capture import head_layers
from ..core.components import bn_of, groups, kind_of
from ..core.errors import EditError, InputError
from ..core.plugin import COUNT, NONNEGATIVE, RATIO, Editor, option
from ..core.progress import bar
from ..core.scores import Scores
from ..graph.groups import consumers, count_ops_and_params
from ..graph.probe import runnable_plan
from ..graph.pruner import prune_by_scores
from ..linalg import DEFAULT_RIDGE, IllConditionedWarning
from ..scorers.fidelity import pair_requests
from ..scorers.run import score
from .common.bnrecal import recalibrate_bn
from .common.modhifi_cnn import (
    Removals,
    calib_batch,
    calib_count,
    compensate_all,
    fidelity_scores,
    gram_budget,
    halves,
)
from .common.modhifi_totals import new_totals, report_totals, warn_totals
from .common.modhifi_transformer import bert_units, prune_transformer
from .common.seqrefit import kept_rows, sequential_refit
from .prune import check_leaves_channels, check_still_runs, output_shape


@dataclass(frozen=True)
class ModHiFiPOptions:
    ratio: float = option(
        0.5, "fraction of channels removed per layer (target='channels')", **RATIO
    )
    steps: int = option(
        1, "steps for target='channels' (one measured better: errors compound)", **COUNT
    )
    target: Literal["channels", "params", "macs"] = option(
        "channels", "what ``ratio`` / ``amount`` counts"
    )
    amount: float | None = option(
        None, "fraction of params / MACs to remove (default: ratio)", **RATIO
    )
    per_step: float = option(
        0.1, "fraction of channels per step when aiming at params / MACs", **RATIO
    )
    max_steps: int = option(40, "give up after this many steps", **COUNT)
    compensate: bool = option(True, "least-squares refit (delta*) of the consumers' kept inputs")
    recalibrate: bool = option(True, "re-estimate BatchNorm statistics after each step")
    ridge: float = option(DEFAULT_RIDGE, "relative ridge of the compensation solves", **NONNEGATIVE)
    conv_refit: Literal["full", "slice"] = option(
        "full", "conv delta*: full refit of the kept slices, or the paper's per-slice scale"
    )
    refit: Literal["auto", "dense", "sequential"] = option(
        "auto",
        "delta* from the dense model's inputs only; or then, after removal, refit each layer in "
        "forward order on the pruned model's inputs against the dense outputs (one calibration "
        "pass per refit layer); auto: sequential when those passes cost at most "
        "sequential_gmacs",
    )
    sequential_gmacs: float = option(
        1000.0,
        "refit='auto': the most GMACs the sequential passes may cost (estimate: refit layers x "
        "calibration samples x MACs per sample)",
        **NONNEGATIVE,
    )
    calib_samples: int = option(2048, "calibration samples per step", **COUNT)
    halves: bool = option(
        True,
        "fidelity scores and delta* statistics from disjoint halves of the calibration samples "
        "(each forwarded once); False: both from all of them (one more pass)",
    )
    scorer: str = option("fidelity", "scorer for steps without given Scores")
    variant: Literal["centred", "uncentred", "fidelity", "alpha"] = option(
        "centred", "fidelity pair score"
    )
    reduce: Literal["mean", "max"] = option("mean", "fidelity channel score over consumers")
    global_pruning: bool = option(False, "rank channels across layers")
    heads: int = option(
        0, "transformers: attention heads removed per layer (ratio: FFN neurons)", **NONNEGATIVE
    )
    ignored: list[str] | None = option(None, "module paths kept whole")


_TRANSFORMER_OPTIONS = {"ratio", "heads", "compensate", "ridge", "calib_samples"}


def _layers(model, example) -> list[str]:
    """The conv / linear layers scored and pruned: all but the classifier head (attention blocks
    lose whole heads through their projections, ``pluginedit.graph.attention``)."""
    head = set(head_layers(model, example))
    return [p for p, m in groups(model).items() if p not in head and kind_of(m) != "attn_head"]


def _scoreable(model, cons: dict) -> tuple[dict, dict]:
    """(the producers of ``cons`` fidelity can score, {the others: why}): a producer read only by
    depthwise convolutions (a stem before a depthwise-separable block without expansion) or by
    layers torch-pruning's numbering says nothing about is not scored, and so keeps its
    channels unless a scored layer shares its group."""
    used = {c for entries in cons.values() for c, _, _ in entries}
    scoreable = set(pair_requests(model, cons, used))
    scored, unscored = {}, {}
    for path, entries in cons.items():
        if any(c in scoreable for c, _, _ in entries):
            scored[path] = entries
        else:
            readers = [c for c, _, _ in entries]
            unscored[path] = (
                f"read only by {readers[:3]} (depthwise, or no pair statistics)"
                if readers
                else "no consumer torch-pruning maps within its width (an output layer, or a "
                "path it misreads)"
            )
    return scored, unscored


class ModHiFiP(Editor):
    """Each step: channel scores (fidelity from one pass of pair statistics, or the given
    Scores for the first step), the removal torch-pruning will make, delta* of every consumer
    from the Gram of its kept inputs on the dense model (half of the calibration samples each),
    removal of the lowest channels with torch-pruning, then (``refit``: where its passes are
    cheap enough, by default) each consumer refit in forward order on the pruned model's inputs
    against the dense outputs (``editors.common.seqrefit``), BN recalibration of the other BNs
    (``editors.common.modhifi_cnn``)."""

    name = "modhifi-p"
    kind = "prune"
    needs_data = True
    Options = ModHiFiPOptions

    def apply(self, model, scores, inputs):
        opts, example = self.options, inputs.example
        self._check_path(model)
        if bert_units(model):
            return self._transformer(model, scores, inputs)
        macs0, params0 = count_ops_and_params(model, example)
        plan = self._plan()
        amount = opts.amount if opts.amount is not None else opts.ratio
        if not opts.global_pruning:
            layers = scores if scores is not None else _layers(model, example)
            check_leaves_channels(model, set(layers) - self._kept_whole(model, inputs), plan[0])
        used = scores.scorer if scores is not None else opts.scorer
        totals, shape = new_totals(), output_shape(model, example)
        totals["macs"], totals["samples"] = macs0, calib_count(inputs.data, opts.calib_samples)
        for i, step_ratio in enumerate(bar(plan, desc="modhifi-p steps")):
            self._step(model, scores if i == 0 else None, inputs, step_ratio, totals)
            macs, params = count_ops_and_params(model, example)
            totals["macs"] = macs
            if (
                opts.target != "channels"
                and 1 - (params / params0 if opts.target == "params" else macs / macs0) >= amount
            ):
                break
        else:
            if opts.target != "channels":
                raise EditError(
                    f"could not remove {amount:.0%} of the {opts.target} in {opts.max_steps} steps"
                )
        check_still_runs(model, example, shape)
        warn_totals(totals)
        record = self.record(
            "removed (physical, torch-pruning)"
            + (" + delta*" if opts.compensate else "")
            + (" + BN recalibration" if opts.recalibrate else ""),
            scores,
            changes=totals["removed"],
            steps=totals["steps"],
        )
        record.scores = used
        record.info = {
            "params_before": params0,
            "params_after": params,
            "macs_before": macs0,
            "macs_after": macs,
            "steps_run": i + 1,
            "ill_conditioned_solves": totals["warned"],
            "max_ridge": max(totals["ridges"], default=0.0),
            "scores_used": used,
            **report_totals(totals),
            "topk_reading": f"channel score = {opts.reduce} over consumers and outputs; "
            "lowest pruned"
            if used == "fidelity"
            else f"scores from {used!r}",
        }
        return record

    def _plan(self) -> list[float]:
        """The fraction of channels each step removes: equal steps that compound to ``ratio``,
        or ``per_step`` until the params / MACs target is met."""
        opts = self.options
        if opts.target == "channels":
            return [1 - (1 - opts.ratio) ** (1 / opts.steps)] * opts.steps
        return [opts.per_step] * opts.max_steps

    def _check_path(self, model) -> None:
        """An option the model's path cannot honour is an error, never silently ignored."""
        opts = self.options
        if opts.refit == "sequential" and not opts.compensate:
            raise InputError("refit='sequential' refits the consumers: it needs compensate=True")
        if not bert_units(model):
            if opts.heads:
                raise InputError(
                    "option heads of modhifi-p removes heads of BERT-family layers "
                    "(attention.self, intermediate.dense): none here; other attention blocks "
                    "lose whole heads by ratio through the dependency graph"
                )
            return
        unread = sorted(
            f.name
            for f in dataclasses.fields(opts)
            if f.name not in _TRANSFORMER_OPTIONS and getattr(opts, f.name) != f.default
        )
        if unread:
            raise InputError(
                f"option(s) {unread} of modhifi-p apply to CNNs; on a transformer it reads only "
                f"{sorted(_TRANSFORMER_OPTIONS)} (FFN neurons and heads, fidelity-scored)"
            )

    def _transformer(self, model, scores, inputs):
        opts = self.options
        done = prune_transformer(
            model,
            scores,
            inputs,
            opts.ratio,
            opts.heads,
            opts.compensate,
            opts.ridge,
            opts.calib_samples,
        )
        record = self.record(
            "removed FFN neurons / attention heads (torch-pruning)"
            + (" + delta*" if opts.compensate else ""),
            scores,
            changes=done["changes"],
            steps=done["steps"],
            info=done["info"],
        )
        record.scores = scores.scorer if scores is not None else "fidelity"
        return record

    def _step(self, model, scores, inputs, ratio, totals) -> None:
        """One step (``editors.common.modhifi_cnn``): scores, the removal plan, delta* on the
        dense model, removal, BN recalibration; each part timed into ``totals["seconds"]``."""
        opts, example, sec = self.options, inputs.example, totals["seconds"]
        batch = calib_batch(model, example)
        own = scores is None and opts.scorer == "fidelity"
        cut = (
            halves(inputs.data, opts.calib_samples)
            if own and opts.compensate and opts.halves
            else None
        )
        first, second = cut if cut is not None else (inputs.data, inputs.data)
        ignored = self._kept_whole(model, inputs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IllConditionedWarning)
            t = time.perf_counter()
            cons = consumers(model, example, _layers(model, example))
            if scores is None:
                scores = self._scores(model, inputs, first, batch, cons, totals)
            sec["scores"] += time.perf_counter() - t
            t = time.perf_counter()
            kept, seen = runnable_plan(
                model, example, scores, ratio, ignored, opts.global_pruning, hook=Removals
            )
            planned, ignored = seen.removed, ignored | set(kept)
            totals["kept_whole"].update(kept)
            sec["surgery"] += time.perf_counter() - t
            dense = copy.deepcopy(model) if self._wants_sequential(planned, totals) else None
            if opts.compensate:
                bns = {c: model.get_submodule(b) for c, b in bn_of(model).items()}
                done = compensate_all(model, cons, second, planned, bns, opts, batch, sec)
                totals["ridges"] += done["ridges"]
                totals["uncompensated"].update(done["skipped"])
                for mode in done["modes"].values():
                    totals["modes"][mode] = totals["modes"].get(mode, 0) + 1
            t = time.perf_counter()
            seen = Removals()
            removed, steps = prune_by_scores(
                model, example, scores, ratio, ignored, opts.global_pruning, before_group=seen
            )
            sec["surgery"] += time.perf_counter() - t
            kept_bns = []
            if dense is not None and removed:
                kept_bns = self._sequential(model, dense, inputs.data, planned, batch, totals)
        totals["warned"] += sum(issubclass(w.category, IllConditionedWarning) for w in caught)
        if not removed:
            raise EditError("modhifi-p removed no channel (nothing prunable, or ratio too small)")
        if seen.removed != planned:
            raise EditError("modhifi-p: torch-pruning removed other channels than planned")
        for k, v in removed.items():
            totals["removed"].setdefault(k, []).extend(v)
        totals["steps"] += steps
        if opts.recalibrate:
            t = time.perf_counter()
            skip = [model.get_submodule(b) for b in kept_bns]
            recalibrate_bn(model, inputs.data, opts.calib_samples, batch, skip)
            sec["recalibration"] += time.perf_counter() - t

    def _wants_sequential(self, planned, totals) -> bool:
        """Whether this step refits sequentially: asked for, or under refit='auto' when the
        estimated cost of its passes is within ``sequential_gmacs`` (noted in the record)."""
        opts = self.options
        if not opts.compensate or opts.refit == "dense":
            return False
        gmacs = len(planned["in"]) * totals["samples"] * totals["macs"] / 1e9
        totals["sequential_gmacs"].append(round(gmacs, 1))
        return opts.refit == "sequential" or gmacs <= opts.sequential_gmacs

    def _sequential(self, model, dense, data, planned, batch, totals) -> list[str]:
        """The error-corrected refit after removal (``editors.common.seqrefit``); returns the BN
        paths it set, which the recalibration leaves."""
        t = time.perf_counter()
        rows = kept_rows(dense, model, planned, gram_budget())
        done = sequential_refit(model, dense, rows, data, bn_of(model), self.options, batch)
        totals["ridges"] += done["ridges"]
        totals["sequential_passes"] += done["passes"]
        totals["sequential_resumed"] += done["resumed"]
        totals["seconds"]["solves"] += time.perf_counter() - t
        return done["bns"]

    def _scores(self, model, inputs, data, batch, cons, totals) -> Scores:
        opts = self.options
        targets = _layers(model, inputs.example)
        if opts.scorer == "fidelity":  # pair statistics: one pass, no Gram of all the inputs
            scored, unscored = _scoreable(model, cons)
            totals["unscored"].update(unscored)
            if not scored:
                named = "; ".join(f"{p!r}: {why}" for p, why in list(unscored.items())[:3])
                raise InputError(f"fidelity can score no layer of this model ({named})")
            values = fidelity_scores(
                model,
                scored,
                data,
                opts.variant,
                opts.reduce,
                batch,
                opts.calib_samples,
            )
            return Scores(values, "fidelity", {"variant": opts.variant, "reduce": opts.reduce})
        return score(
            model,
            opts.scorer,
            data=inputs.data,
            targets=targets,
            max_samples=opts.calib_samples,
            example_inputs=inputs.example,
            num_classes=inputs.num_classes,
        )

    def _kept_whole(self, model, inputs) -> set[str]:
        return set(self.options.ignored or []) | set(head_layers(model, inputs.example))
