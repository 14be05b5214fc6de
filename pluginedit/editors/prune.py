"""Physical, dependency-aware structured pruning with torch-pruning; Scores decide what goes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..capture import head_layers
from ..core.components import groups, size_of
from ..core.errors import EditError, InputError
from ..core.outputs import output
from ..core.plugin import COUNT, RATIO, Editor, option
from ..graph.probe import runnable_plan
from ..graph.pruner import prune_by_scores


def output_shape(model, example) -> tuple:
    with torch.no_grad():
        return tuple(output(model, example).shape)


def check_still_runs(model, example, shape) -> None:
    """torch-pruning can trace a graph it does not fully see (e.g. through .numpy()); a pruned
    model that no longer runs, or changes its output shape, is a failed edit."""
    try:
        now = output_shape(model, example)
    except Exception as e:
        raise EditError(
            f"the pruned model no longer runs ({type(e).__name__}: {e}); torch-pruning "
            "did not see every dependency of this model; use the 'mask' editor"
        ) from e
    if now != shape:
        raise EditError(f"pruning changed the output shape from {shape} to {now}")


def check_leaves_channels(model, layers, ratio: float, round_to: int | None = None) -> None:
    """Per-layer pruning keeps int(n * (1 - ratio)) of a layer's n channels (rounded down to a
    multiple of ``round_to``), and torch-pruning leaves a layer that would keep none whole. A
    ratio that empties every layer is refused up front (it would remove nothing); one that
    empties some is a warning naming them."""
    sizes = {p: size_of(m) for p, m in groups(model).items() if p in set(layers)}

    def kept(n: int) -> int:
        k = int(n * (1 - ratio))
        return k - k % round_to if round_to else k

    emptied = {p: n for p, n in sizes.items() if kept(n) < 1}
    if not emptied:
        return
    named = ", ".join(f"{p!r} ({n} channels)" for p, n in list(emptied.items())[:5])
    rounded = " rounded to round_to" if round_to else ""
    limit = f"a layer of n channels keeps int(n * (1 - ratio)){rounded}"
    if len(emptied) == len(sizes):
        raise InputError(
            f"ratio {ratio} leaves no channel in any layer to prune ({named}): {limit}, "
            f"so nothing would be removed; use a ratio of at most 1 - 1/n "
            f"({1 - 1 / min(sizes.values()):.4g} for the smallest layer)"
        )
    warnings.warn(
        f"ratio {ratio} leaves no channel in {named}: {limit}; torch-pruning keeps these "
        "layers whole",
        stacklevel=3,
    )


def warn_kept_whole(editor: str, kept_whole: dict) -> None:
    if kept_whole:
        named = "; ".join(f"{p!r} ({why})" for p, why in list(kept_whole.items())[:3])
        warnings.warn(
            f"{editor}: {len(kept_whole)} group(s) kept whole, torch-pruning misreads them (the "
            f"model no longer ran without: {named})",
            stacklevel=4,
        )


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = option(
        0.5, "fraction of channels removed (per coupled group, or globally)", **RATIO
    )
    global_pruning: bool = option(False, "rank channels across layers instead of per layer")
    ignored: list[str] | None = option(
        None, "module paths kept whole (the classifier head always is)"
    )
    round_to: int | None = option(None, "keep channel counts multiples of this", **COUNT)


class PruneEditor(Editor):
    """Remove the lowest-scored channels physically (torch-pruning); needs example inputs to
    trace the dependency graph."""

    name = "prune"
    kind = "prune"
    Options = PruneOptions

    def apply(self, model, scores, inputs):
        if scores is None:
            raise InputError("prune needs Scores")
        if inputs.example is None:
            raise InputError(
                "prune needs example_inputs (or data) to trace the model's dependency graph"
            )
        opts = self.options
        modules = dict(model.named_modules())
        unknown = [p for p in (opts.ignored or []) if p not in modules]
        if unknown:
            raise InputError(f"ignored layers not in the model: {unknown}")
        ignored = set(opts.ignored or []) | set(head_layers(model, inputs.example))
        if not set(scores) - ignored:
            raise InputError(
                f"nothing to prune: the scores name no layer outside the classifier head "
                f"and the ignored ones (scored: {list(scores)}; kept: {sorted(ignored)})"
            )
        before = {p: size_of(modules[p]) for p in scores if p in modules}
        if not opts.global_pruning:
            check_leaves_channels(model, set(scores) - ignored, opts.ratio, opts.round_to)
        shape = output_shape(model, inputs.example)
        # groups torch-pruning misreads (the pruned copy no longer runs) are kept whole
        kept_whole, _ = runnable_plan(
            model, inputs.example, scores, opts.ratio, ignored, opts.global_pruning, opts.round_to
        )
        warn_kept_whole("prune", kept_whole)
        removed, steps = prune_by_scores(
            model, inputs.example, scores, opts.ratio, ignored | set(kept_whole),
            opts.global_pruning, opts.round_to,
        )  # fmt: skip
        removed = {p: v for p, v in removed.items() if p in before}
        if not removed:
            raise EditError(
                f"torch-pruning removed no channel: ratio {opts.ratio} keeps fewer than one "
                "channel of what it ranks, or none of the scored layers has a dependency path "
                "it can follow (untraceable ops such as .numpy()?)"
                + (f"; {len(kept_whole)} group(s) were kept whole, the model no longer ran "
                   "without them" if kept_whole else "")
            )  # fmt: skip
        check_still_runs(model, inputs.example, shape)
        return self.record(
            "removed (physical, torch-pruning)",
            scores,
            changes=removed,
            steps=steps,
            info={"channels_before": before, "kept_whole": kept_whole},
        )
