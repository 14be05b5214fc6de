"""What the commands share: the model and data flags, loading the data bundle and the model they
name, the editor a command may run, and the before/after report every editing command ends with."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys

from .. import api, report
from ..capture import check_classes
from ..contrib import train, zoo
from ..contrib.data import load_dataset
from ..core import registry
from ..core.errors import InputError
from ..io import digest
from ..stats import distributed
from .checks import model_kwargs, nonnegative, positive, seed


def key_value(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"option {text!r} must look like key=value")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def add_model_args(p: argparse.ArgumentParser, data_default: str = "digits") -> None:
    """The flags naming the model (zoo, factory, saved, Hugging Face) and its data."""
    _add_source_args(p)
    _add_data_args(p, data_default)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """Where the model comes from: a zoo architecture, a factory, a pluginedit save or a
    transformers folder, and the weights to load into it."""
    p.add_argument(
        "--arch",
        default=None,  # None: not given (vgg unless --model or --hf names the model)
        help=f"model zoo architecture ({', '.join(sorted(zoo.ARCHS))}; default vgg)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="PKG.MODULE:FACTORY",
        help="your own model: a factory called with --model-args (instead of --arch)",
    )
    p.add_argument(
        "--model-args", default="{}", metavar="JSON", help="keyword arguments of --model"
    )
    p.add_argument(
        "--weights", default=None, help="weights: .safetensors, or a .pt/.pth state dict"
    )
    p.add_argument(
        "--load",
        default=None,
        metavar="DIR",
        help="a model saved by pluginedit (--save / pluginedit.save) to edit further",
    )
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PKG.MODULE:FACTORY",
        help="with --load: a factory outside the allow-list that the save may call (repeatable)",
    )
    p.add_argument(
        "--sha256",
        default=None,
        metavar="HEX",
        help="with --load: accept only the save with this manifest digest (printed by --save)",
    )
    p.add_argument(
        "--hf",
        default=None,
        metavar="DIR",
        help="a local transformers model directory (its class from the config); --data is "
        "then a text file or data set (.json/.jsonl/.csv/.txt, 'text' column)",
    )


def _add_data_args(p: argparse.ArgumentParser, data_default: str) -> None:
    """The data set, the subsets of it that train, test and calibrate, the zoo model's training
    (epochs, seed) and the progress bars."""
    p.add_argument(
        "--data",
        default=data_default,
        help="digits, mnist, fashion-mnist, a .safetensors/.npz file with x and y, or a "
        "local Hugging Face data set folder",
    )
    p.add_argument(
        "--data-dir", default=None, help="folder of the idx .gz files (MNIST / Fashion-MNIST)"
    )
    p.add_argument(
        "--epochs", type=positive, default=None, help="training epochs of the cached model"
    )
    p.add_argument(
        "--train-samples", type=positive, default=None, help="train on a seeded subset of this size"
    )
    p.add_argument(
        "--test-samples", type=positive, default=None, help="evaluate on a seeded test subset"
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument(
        "--calib-samples", type=positive, default=2048, help="training samples used for statistics"
    )
    add_progress_args(p)


def add_progress_args(p: argparse.ArgumentParser) -> None:
    """Progress bars on the long steps: on by default when stderr is a terminal."""
    p.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="progress bars on every long step (default: when stderr is a terminal)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_option_arg(p: argparse.ArgumentParser, help: str) -> None:
    """``-o KEY=VALUE`` (repeatable): a plugin option, its value read as a Python literal."""
    p.add_argument(
        "-o",
        "--option",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )


def add_edit_args(p: argparse.ArgumentParser, editor: str) -> None:
    p.add_argument("--editor", default=editor, help="editor plugin name")
    add_option_arg(p, "extra option for the scorer/editor (repeatable)")
    p.add_argument(
        "--finetune-epochs", type=nonnegative, default=0, help="fine-tune after the edit"
    )
    p.add_argument("--report", default=None, help="write the before/after JSON here")
    p.add_argument("--plot", default=None, help="write a per-class accuracy PNG here")
    p.add_argument(
        "--save",
        default=None,
        metavar="DIR",
        help="save the edited model (safetensors + manifest; reload with pluginedit.load)",
    )


def bundle_for(args):
    if getattr(args, "hf", None):
        from ..contrib import hf

        bundle = hf.text_bundle(args.data, args.hf)  # labels are optional for text
    else:
        bundle = load_dataset(args.data, args.data_dir)
        check_classes(bundle.train.y, bundle.num_classes)  # one class is no classification task
    if getattr(args, "train_samples", None):
        bundle.train = bundle.train.subset(args.train_samples)
    if getattr(args, "test_samples", None):
        bundle.test = bundle.test.subset(args.test_samples)
    return bundle


def model_for(args, bundle):
    if (args.model or args.trust) and os.getcwd() not in sys.path:
        # mypkg/ in the current folder imports as with `python -m` (console scripts do not add it)
        sys.path.insert(0, os.getcwd())
    if args.load:
        model = api.load(args.load, trusted=args.trust, sha256=args.sha256)
        if args.weights:
            api.load_weights_into(model, args.weights)
        return model
    if args.hf:
        return api.load_model(hf=args.hf, weights=args.weights)
    if args.model:
        return api.load_model(args.model, model_kwargs(args), args.weights)
    with distributed.main_first():  # under torchrun rank 0 trains and caches, the others load
        model = train.pretrained(
            args.arch, bundle, epochs=args.epochs, seed=args.seed, progress=args.progress
        )
    if args.weights:
        api.load_weights_into(model, args.weights)
    return model


def setup(args):
    bundle = bundle_for(args)
    model = model_for(args, bundle)
    calib = bundle.train.subset(args.calib_samples, seed=args.seed)
    return bundle, model, calib


def finish(args, bundle, model, dense, record, extra: dict, measure=None) -> dict:
    """Fine-tune (if asked), compare with the dense model and say first what the edit did: its
    goal (``measure(model)``, a ``goal``, when the command has one) and whether the model
    survived it; then the table, what to try when it did not, and the files. An edit that
    reached none of its goal is not saved."""
    if args.finetune_epochs:
        train.fit(
            model,
            extra.pop("finetune_split", bundle.train),
            args.finetune_epochs,
            lr=1e-3,
            seed=args.seed,
            progress=args.progress,
        )
    extra.pop("finetune_split", None)
    rep = {
        "command": args.command,
        "model": args.load or args.hf or args.model or args.arch,
        "data": args.data,
        "before": report.evaluate(dense, bundle.test, bundle.num_classes),
        "after": report.evaluate(model, bundle.test, bundle.num_classes),
        "edit": record.summary(),
        "finetune_epochs": args.finetune_epochs,
        **extra,
    }
    if "forgotten_class" in extra:
        for side in ("before", "after"):
            rep[side].update(
                report.forgetting(rep[side]["per_class_accuracy"], extra["forgotten_class"])
            )
    rep["health"] = report.health(rep, bundle.num_classes)
    rep["latency_speedup"] = report.speedup(rep["before"]["latency"], rep["after"]["latency"])
    if measure is not None:
        rep["goal"] = measure(model)
    args.ran = report.title(rep)  # for the command's closing summary line
    _print_verdict(args, rep)
    if not distributed.is_main():  # under torchrun only rank 0 writes
        return rep
    _write_outputs(args, bundle, model, record, rep)
    return rep


def _print_verdict(args, rep: dict) -> None:
    """The first line says what ran and whether it worked; advice follows the table."""
    health, goal = rep["health"], rep.get("goal")
    first = f"{report.title(rep)}: "
    if goal is not None and goal["status"] == "none":
        first += f"FAILED, {goal['message']}"
    elif health["status"] in ("destroyed", "damaged"):
        first += f"WARNING, {health['message']}"
    else:
        first += goal["message"] if goal is not None else health["message"]
    print(first)
    if goal is not None and goal["status"] != "none" and goal["message"] not in first:
        print(f"goal: {goal['message']}")  # the first line warned about the model instead
    print(report.table(rep))
    if health["status"] in ("destroyed", "damaged"):
        print("what usually works instead:")
        for tip in advice(args, rep):
            print(f"  - {tip}")


def advice(args, rep: dict) -> list[str]:
    """What to try when an edit destroyed or damaged the model."""
    editor, tips = rep["edit"].get("editor", args.editor), []
    if rep.get("command") == "prune" and editor not in ("modhifi-p", "discedit-sp"):
        tips.append(
            "compensate for the removed channels: --editor modhifi-p (least-squares "
            "compensation and BN recalibration, no training)"
        )
    if not args.finetune_epochs:
        tips.append("fine-tune after the edit: --finetune-epochs 1 (or more)")
    ratio = rep.get("ratio")
    if isinstance(ratio, (int, float)) and ratio > 0.1:
        tips.append(f"remove less: --ratio {ratio / 2:g}")
    tips.append(f"a gentler edit: `pluginedit plugins --describe {editor}` lists its options")
    return tips


def _write_outputs(args, bundle, model, record, rep: dict) -> None:
    goal = rep.get("goal")
    if getattr(args, "save", None):
        if goal is not None and goal["status"] == "none":
            print(f"not saved to {args.save}: the edit reached none of its goal")
        else:
            api.save(model, args.save, record)
            print(
                f"edited model saved to {args.save} (reload with pluginedit.load; pin it with "
                f"sha256={digest(args.save)})"
            )
    if args.report:
        report.write(rep, args.report)
        print(f"report written to {args.report}")
    if args.plot:
        report.plot(rep, args.plot, bundle.class_names)
        print(f"plot written to {args.plot}")


def exit_status(rep: dict) -> int:
    """1 when the edit reached none of its goal (the first line said so), else 0."""
    goal = rep.get("goal")
    return 1 if goal is not None and goal["status"] == "none" else 0


def goal(what: str, done: int, of: int, detail: str = "") -> dict:
    """A goal of ``of`` items of which ``done`` were reached: reached, partial or none."""
    status = "reached" if done >= of else "partial" if done > 0 else "none"
    message = f"{done} of {of} {what} ({done / max(of, 1):.0%})" + (f"; {detail}" if detail else "")
    if status == "none":
        message = f"reached none of its goal: {message}"
    return {"what": what, "done": done, "of": of, "status": status, "message": message}


def editor_class(name: str, kinds: tuple[str, ...], command: str):
    """The editor plugin class, refused (exit 2) if it is not of a kind this command runs."""
    cls = registry.get("editor", name)
    if cls.kind not in kinds:
        raise InputError(
            f"editor {name!r} is a {cls.kind} editor; `pluginedit {command}` runs "
            f"{' or '.join(kinds)} editors"
        )
    return cls


def known_options(cls, **values) -> dict:
    """The CLI's own flags, passed only to editors that declare them as options."""
    names = {f.name for f in dataclasses.fields(cls.Options)}
    return {k: v for k, v in values.items() if k in names}
