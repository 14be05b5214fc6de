"""What the command line checks before any work: its number types (refused when the command line
is parsed) and the arguments that need neither data nor a model (output paths, the model's
description), so that a mistake fails in a second, not after the computation."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..core.errors import InputError


def _integer(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive(text: str) -> int:
    return _integer(text, 1, None, "a positive integer")


def nonnegative(text: str) -> int:
    return _integer(text, 0, None, "an integer >= 0")


def seed(text: str) -> int:
    # torch seeds are 64-bit: a larger one would overflow deep inside the run
    return _integer(text, 0, 2**64 - 1, "an integer in [0, 2**64 - 1]")


def model_kwargs(args) -> dict:
    try:
        value = json.loads(args.model_args)
    except json.JSONDecodeError as e:
        raise InputError(f"--model-args is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise InputError(
            f'--model-args must be a JSON object of keyword arguments ({{"name": value}}), '
            f"got {type(value).__name__} {args.model_args}"
        )
    return value


def _check_model_choice(args) -> None:
    """One of --arch, --model, --hf, --load names the model (--arch vgg when none is given); the
    others would be ignored, so naming two is an error."""
    if not hasattr(args, "arch"):
        return
    named = [
        f"{flag} {value}"
        for flag, value in (
            ("--arch", args.arch),
            ("--model", args.model),
            ("--hf", args.hf),
            ("--load", args.load),
        )
        if value is not None
    ]
    if len(named) > 1:
        raise InputError(f"{' and '.join(named)} each name the model; give one")
    if args.model:
        model_kwargs(args)
    elif args.model_args != "{}":
        raise InputError("--model-args is read only with --model")
    if (args.trust or args.sha256) and not args.load:
        raise InputError(
            "--trust and --sha256 apply to --load (a saved model); --model is trusted by naming it"
        )
    if not named:
        args.arch = "vgg"


def _check_output(flag: str, path: str | None, kind: str = "file") -> None:
    """Refuse an output path that cannot be written, before any work is done: the folder of a
    file (or of a ``stem``.* pair of files) must exist and be writable; a folder (``--save``) is
    created with its parents, below a writable one. A file must not be an existing folder, nor a
    folder an existing file."""
    if not path:
        return
    p = Path(path).absolute()
    if kind == "folder" and p.exists() and not p.is_dir():
        raise InputError(f"{flag} {path} is an existing file; {flag} names a folder")
    if kind == "file" and p.is_dir():
        raise InputError(f"{flag} {path} is an existing folder; {flag} names a file")
    parent = next(a for a in (p, *p.parents) if a.exists()) if kind == "folder" else p.parent
    if not parent.exists():
        raise InputError(f"{flag} {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: the folder {parent} is not writable")


def _check_plot_format(path: str | None) -> None:
    """The plot's format comes from its extension (none: png): one matplotlib can write."""
    suffix = Path(path).suffix[1:].lower() if path else ""
    if suffix:
        from matplotlib.backend_bases import FigureCanvasBase

        known = FigureCanvasBase.get_supported_filetypes()
        if suffix not in known:
            raise InputError(
                f"--plot {path}: matplotlib cannot write .{suffix} files; "
                f"use one of {', '.join(sorted(known))}"
            )


def _check_progress(args) -> None:
    """``--progress`` forces the bars on, ``--quiet`` off; neither: on when stderr is a
    terminal (a log file gets no bars)."""
    if not hasattr(args, "quiet"):
        return
    if args.quiet and args.progress:
        raise InputError("--progress and --quiet contradict each other; give one")
    args.progress = bool(args.progress) or (not args.quiet and sys.stderr.isatty())


def check_args(args) -> None:
    """Checks that need neither data nor a model, run before any work: a bad output path or two
    flags that contradict each other fail at once, not after the computation."""
    for flag, kind in (("report", "file"), ("plot", "file"), ("out", "stem"), ("save", "folder")):
        _check_output(f"--{flag}", getattr(args, flag, None), kind)
    _check_plot_format(getattr(args, "plot", None))
    _check_progress(args)
    _check_model_choice(args)
    keys = [k for k, _ in getattr(args, "option", None) or []]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise InputError(
            f"-o {twice[0]}= is given {keys.count(twice[0])} times: give each option once"
        )
