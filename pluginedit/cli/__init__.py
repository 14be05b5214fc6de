"""The ``pluginedit`` command line: plugins, train, score, prune, forget, fix, rectify, demo,
bench."""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time

from .. import api
from ..capture import example_batch
from ..contrib import train
from ..core import registry
from ..core.errors import InputError, PluginEditError
from ..core.progress import shown
from ..evaluate import accuracy, predictions
from ..stats import distributed
from . import bench
from . import llm as cli_llm
from ._common import (
    add_edit_args,
    add_model_args,
    add_option_arg,
    add_progress_args,
    bundle_for,
    editor_class,
    exit_status,
    finish,
    goal,
    known_options,
    setup,
)
from .checks import check_args, nonnegative, seed
from .console import one_line_warnings, summary
from .plugins import add_plugins_parser
from .rectify import add_rectify_parsers


def cmd_train(args) -> int:
    if args.model or args.hf:
        raise InputError(
            "`pluginedit train` trains zoo models (--arch); --model / --hf models are "
            "trained by their owner"
        )
    bundle = bundle_for(args)
    t0 = time.perf_counter()
    with distributed.main_first():
        model = train.pretrained(
            args.arch,
            bundle,
            epochs=args.epochs,
            seed=args.seed,
            progress=args.progress,
            retrain=args.retrain and distributed.is_main(),
        )
    acc, _ = accuracy(model, bundle.test, bundle.num_classes)
    args.ran = f"{args.arch} on {bundle.name}"
    print(
        f"{args.arch} on {bundle.name}: test accuracy {acc:.4f} "
        f"({time.perf_counter() - t0:.1f}s, cache {train.cache_dir()})"
    )
    return 0


def _scorer_options(names: list[str], options: dict) -> dict[str, dict]:
    """Per scorer, its ``-o`` options: ``key=value`` for a single scorer, ``name.key=value``
    when several share the pass."""
    out = {n: {} for n in names}
    for key, value in options.items():
        name, dot, opt = key.partition(".")
        if dot and name in out:
            out[name][opt] = value
        elif len(names) == 1 and not dot:
            out[names[0]][key] = value
        else:
            raise InputError(
                f"option {key!r}: with several scorers write <scorer>.<option>=value "
                f"(scorers: {', '.join(names)})"
            )
    return out


def cmd_score(args) -> int:
    names = args.scorer or ["l1"]
    bundle, model, calib = setup(args)
    opts = _scorer_options(names, dict(args.option))
    scorers = [registry.get_scorer(n, **opts[n]) for n in names]
    t0 = time.perf_counter()
    results = api.score_many(
        model, scorers, data=calib, num_classes=bundle.num_classes, progress=args.progress
    )
    args.ran = f"{', '.join(names)} scores of {args.load or args.hf or args.model or args.arch}"
    print(
        f"scored with {', '.join(names)} in one pass over {len(calib)} samples: "
        f"{time.perf_counter() - t0:.2f}s"
    )
    for name, scores in results.items():
        print(f"{name}:")
        for path, v in scores.items():
            print(
                f"  {path:32s} n={len(v):4d}  min={v.min():.4g}  median={v.median():.4g}  "
                f"max={v.max():.4g}"
            )
        if args.out and distributed.is_main():
            stem = args.out if len(names) == 1 else f"{args.out}.{name}"
            scores.save(stem)
            print(f"  written to {stem}.safetensors and {stem}.json")
    return 0


def _prune_flags(args, cls, options: dict) -> dict:
    """``--ratio`` and ``--global`` as editor options. The same option also given with ``-o``
    is refused (which value was meant?), as is a flag the editor has no option for; without
    either, editors with a ratio get the CLI's default 0.5."""
    given = {
        "ratio": ("--ratio", args.ratio),
        "global_pruning": ("--global", True if args.global_pruning else None),
    }
    flags = {key: value for key, (_, value) in given.items() if value is not None}
    clash = [f"{given[key][0]} and -o {key}=" for key in flags if key in options]
    if clash:
        raise InputError(f"{'; '.join(clash)} set the same option: give it once")
    unused = set(flags) - set(known_options(cls, **flags))
    if unused:
        raise InputError(f"editor {args.editor!r} has no option(s) {sorted(unused)}")
    if "ratio" not in flags and "ratio" not in options:
        flags |= known_options(cls, ratio=0.5)
    return flags


def cmd_prune(args) -> int:
    cls = editor_class(args.editor, ("prune", "mask"), "prune")
    options = dict(args.option)
    scorer_opts = {k[7:]: v for k, v in options.items() if k.startswith("scorer.")}
    edit_opts = {k: v for k, v in options.items() if not k.startswith("scorer.")}
    flags = _prune_flags(args, cls, edit_opts)
    bundle, model, calib = setup(args)
    dense = copy.deepcopy(model)
    scores = None
    # an editor with a scorer of its own (modhifi-p) uses it unless --scorer is given
    scorer = args.scorer or (None if "scorer" in known_options(cls, scorer=1) else "l1")
    if cls.uses_scores and scorer:
        scores = api.score(
            model,
            scorer,
            data=calib,
            num_classes=bundle.num_classes,
            progress=args.progress,
            **scorer_opts,
        )
    elif scorer_opts:
        raise InputError(
            f"editor {args.editor!r} computes its own scores: scorer options are unused"
        )
    record = api.edit(
        model,
        args.editor,
        scores,
        data=calib if cls.needs_data else None,
        example_inputs=example_batch(calib),
        num_classes=bundle.num_classes if cls.needs_labels else None,
        **flags,
        **edit_opts,
    )
    rep = finish(
        args,
        bundle,
        model,
        dense,
        record,
        {"scorer": record.scores, "ratio": edit_opts.get("ratio", flags.get("ratio"))},
    )
    return exit_status(rep)


def cmd_forget(args) -> int:
    editor_class(args.editor, ("forget",), "forget")
    bundle, model, calib = setup(args)
    dense = copy.deepcopy(model)
    record = api.forget(
        model,
        args.forget_class,
        calib,
        editor=args.editor,
        num_classes=bundle.num_classes,
        **dict(args.option),
    )
    retained = bundle.train.subset(args.calib_samples, exclude=[args.forget_class], seed=args.seed)
    extra = {"forgotten_class": args.forget_class, "finetune_split": retained}
    rep = finish(args, bundle, model, dense, record, extra, _forget_goal(args, bundle, dense))
    return exit_status(rep)


def _forget_goal(args, bundle, dense):
    """A goal measured after fine-tuning: the test examples of the class that the dense model
    recognised and the edited one no longer does (a callable, run by ``finish``)."""
    x = bundle.test.x[bundle.test.y == args.forget_class]

    def measure(model) -> dict:
        known = predictions(dense, x) == args.forget_class
        kept = predictions(model, x) == args.forget_class
        of = int(known.sum())
        return goal(
            f"test examples of class {args.forget_class} forgotten", int((known & ~kept).sum()), of
        )

    return measure


def cmd_demo(args) -> int:
    """The same digits CNN pruned to the same size three ways; the ModHiFi-P model saved,
    reloaded in a fresh process and re-evaluated."""
    from .. import demo

    out = demo.run(
        args.ratio,
        args.finetune_epochs,
        args.seed,
        args.save,
        args.report,
        args.plot,
        progress=args.progress,
    )
    if args.report:
        print(f"report written to {args.report}")
    if args.plot:
        print(f"plot written to {args.plot}")
    args.ran = f"the digits CNN pruned at {args.ratio} three ways, saved and reloaded"
    return 0 if out["reload"]["max_abs_logit_diff"] <= 1e-5 else 1


def cmd_bench(args) -> int:
    return bench.main(args.rest)


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train (or load from cache) a zoo model")
    add_model_args(p)
    p.add_argument("--retrain", action="store_true")
    p.set_defaults(fn=cmd_train)


def _add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="score the components of a model")
    add_model_args(p)
    p.add_argument(
        "--scorer",
        action="append",
        default=None,
        help="scorer plugin (repeat to score with several in one pass; default l1)",
    )
    add_option_arg(p, "scorer option; <scorer>.<key>=value with several scorers")
    p.add_argument(
        "--out",
        default=None,
        help="save Scores as OUT.safetensors + OUT.json (OUT.<scorer>.* for several)",
    )
    p.set_defaults(fn=cmd_score)


def _add_prune_parser(sub) -> None:
    p = sub.add_parser("prune", help="score and prune a model, then report before/after")
    add_model_args(p)
    add_edit_args(p, "prune")
    p.add_argument(
        "--scorer",
        default=None,
        help="scorer plugin (default: l1, or the editor's own scorer if it has one)",
    )
    p.add_argument(
        "--ratio", type=float, default=None, help="fraction of channels to remove (default 0.5)"
    )
    p.add_argument(
        "--global", dest="global_pruning", action="store_true", help="rank channels across layers"
    )
    p.set_defaults(fn=cmd_prune)


def _add_forget_parser(sub) -> None:
    p = sub.add_parser("forget", help="make a model forget one class, then report before/after")
    add_model_args(p)
    add_edit_args(p, "discedit-u")
    p.add_argument("--class", dest="forget_class", type=int, required=True)
    p.set_defaults(fn=cmd_forget)


def _add_demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="the main job: l1 vs modhifi-p at the same size, save and reload"
    )
    p.add_argument(
        "--ratio", type=float, default=0.5, help="fraction of each layer's channels removed"
    )
    p.add_argument("--save", default=None, metavar="DIR", help="where to save the modhifi-p model")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--finetune-epochs", type=nonnegative, default=15)
    p.add_argument("--report", default=None)
    p.add_argument("--plot", default=None)
    add_progress_args(p)
    p.set_defaults(fn=cmd_demo)


def _add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="kernel benchmarks (pluginedit bench kernels)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pluginedit", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    add_plugins_parser(sub)
    _add_train_parser(sub)
    _add_score_parser(sub)
    _add_prune_parser(sub)
    _add_forget_parser(sub)
    add_rectify_parsers(sub)
    _add_demo_parser(sub)
    _add_bench_parser(sub)
    return ap


def main(argv=None) -> int:
    """Under ``torchrun --nproc_per_node N`` every process joins the group (gloo on CPU), reads its
    shard of the data for the statistics, and only rank 0 prints results and writes files."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if cli_llm.wants(argv):  # prune --text: a decoder LLM pruned block by block
        return cli_llm.run(argv)
    args = parser().parse_args(argv)
    joined = distributed.init_from_env()
    try:
        with contextlib.ExitStack() as quiet:
            if not distributed.is_main():
                quiet.enter_context(
                    contextlib.redirect_stdout(quiet.enter_context(open(os.devnull, "w")))
                )
            check_args(args)
            quiet.enter_context(shown(getattr(args, "progress", False)))
            quiet.enter_context(one_line_warnings())
            t0 = time.perf_counter()
            code = args.fn(args)
            summary(args, code, time.perf_counter() - t0)
            return code
    except PluginEditError as e:
        print(f"pluginedit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # every file is written whole or not at all: nothing to clean
        print("pluginedit: interrupted", file=sys.stderr)
        return 130
    finally:
        if joined:
            distributed.finish()


if __name__ == "__main__":
    sys.exit(main())
