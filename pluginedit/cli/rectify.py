"""The rectifying commands: ``fix`` (one misclassified test example, COAR-Edit) and ``rectify``
(clean / corrupted pairs: a pairs file, or the built-in trojan benchmark)."""

from __future__ import annotations

import copy

import torch

from .. import api
from ..capture import Pairs, Split
from ..core.errors import InputError
from ..evaluate import predictions
from ._common import (
    add_edit_args,
    add_model_args,
    bundle_for,
    editor_class,
    exit_status,
    finish,
    goal,
    model_for,
    setup,
)
from .checks import positive


def cmd_fix(args) -> int:
    """Fix one misclassified test example with a rectify editor (coar-edit): the references and
    the accuracy guard come from the calibration (training) samples, the target is the test
    example, appended to them."""
    editor_class(args.editor, ("rectify",), "fix")
    bundle, model, calib = setup(args)
    test = bundle.test
    wrong = (predictions(model, test.x) != test.y).nonzero().squeeze(1)
    if args.example == "auto":
        if len(wrong) == 0:
            raise InputError("every test example is classified correctly; nothing to fix")
        i = int(wrong[0])
    else:
        try:
            i = int(args.example)
        except ValueError as e:
            raise InputError(
                f"--example must be a test index or 'auto', got {args.example!r}"
            ) from e
        if not 0 <= i < len(test.y):
            raise InputError(f"--example {i} out of range [0, {len(test.y) - 1}]")
    dense = copy.deepcopy(model)
    pool = Split(torch.cat([calib.x, test.x[i : i + 1]]), torch.cat([calib.y, test.y[i : i + 1]]))
    record = api.edit(
        model,
        args.editor,
        data=pool,
        num_classes=bundle.num_classes,
        **({"target": [len(calib.y)]} | dict(args.option)),
    )
    after = int(predictions(model, test.x[i : i + 1])[0])
    print(
        f"test example {i}: label {int(test.y[i])}, "
        f"predicted {int(predictions(dense, test.x[i : i + 1])[0])} "
        f"before and {after} after ({record.num_changed()} components ablated)"
    )

    def fixed(m) -> dict:  # measured after any fine-tuning
        return goal("example fixed", int(predictions(m, test.x[i : i + 1])[0] == test.y[i]), 1)

    extra = {"example": i, "label": int(test.y[i]), "predicted_after": after}
    return exit_status(finish(args, bundle, model, dense, record, extra, fixed))


def _read_pairs(path: str) -> Pairs:
    """The pairs file: clean, corrupted and integer labels y (a float label would be truncated
    to a class it does not name); their range is checked against the model by the edit."""
    from safetensors.torch import load_file

    try:
        t = load_file(path)
    except Exception as e:
        raise InputError(f"cannot read --pairs {path}: {e}") from e
    missing = {"clean", "corrupted", "y"} - set(t)
    if missing:
        raise InputError(
            f"--pairs {path} lacks tensors {sorted(missing)} (needs clean, corrupted, y)"
        )
    y = t["y"]
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
        raise InputError(
            f"--pairs {path}: y must be a 1-D array of integer class labels, "
            f"got {y.dtype} {tuple(y.shape)}"
        )
    return Pairs(t["clean"], t["corrupted"], y.long())


def _rectify_inputs(args, bundle, pairs: Pairs | None):
    """(model, pairs, triggered test split or None): the user's model and pairs, or the
    built-in trojan benchmark (a trojaned zoo model, n clean / triggered training pairs)."""
    if pairs is not None:
        return model_for(args, bundle), pairs, None
    from ..contrib import backdoor

    trigger = backdoor.calibrated(bundle)
    model = backdoor.trojaned(args.arch, bundle, target=0, trigger=trigger, progress=args.progress)
    clean, corrupted, y = backdoor.pairs(bundle.train, args.n, 0, trigger, seed=args.seed)
    return model, Pairs(clean, corrupted, y), backdoor.triggered_test(bundle, 0, trigger)


def cmd_rectify(args) -> int:
    """Rectify corrupted inputs (a trigger, an artefact) from clean / corrupted pairs."""
    editor_class(args.editor, ("rectify",), "rectify")
    if not args.pairs and (args.model or args.hf):
        raise InputError(
            "--model / --hf need --pairs: without them rectify runs the built-in "
            "benchmark on a trojaned zoo model (--arch)"
        )
    pairs = (
        _read_pairs(args.pairs) if args.pairs else None
    )  # a bad file fails before any data is read
    bundle = bundle_for(args)
    model, pairs, triggered = _rectify_inputs(args, bundle, pairs)
    calib = bundle.train.subset(args.calib_samples, seed=args.seed)
    dense = copy.deepcopy(model)
    record = api.edit(
        model,
        args.editor,
        data=calib,
        pairs=pairs,
        num_classes=bundle.num_classes,
        **dict(args.option),
    )
    extra = {"pairs": len(pairs), "rectified": record.info.get("rectified")}
    if triggered is not None:
        asr = [float((predictions(m, triggered.x) == 0).float().mean()) for m in (dense, model)]
        extra["attack_success_rate"] = {"before": asr[0], "after": asr[1]}
        print(f"attack success rate {asr[0]:.4f} -> {asr[1]:.4f} ({len(pairs)} pair(s))")
    rep = finish(args, bundle, model, dense, record, extra, _pairs_goal(dense, pairs))
    rep["rectified"] = rep["goal"]["rectified_after"]  # as measured (after any fine-tuning)
    return exit_status(rep)


def _pairs_goal(dense, pairs: Pairs):
    """The rectification goal: the pairs whose corrupted input the dense model predicts unlike
    its clean one, and how many of them the edited model predicts like their clean one."""

    def agree(m) -> torch.Tensor:
        return predictions(m, pairs.corrupted) == predictions(m, pairs.clean)

    before = agree(dense)

    def measure(model) -> dict:
        after = agree(model)
        out = goal(
            "pairs rectified",
            int((~before & after).sum()),
            int((~before).sum()),
            f"{float(after.float().mean()):.0%} of all {len(after)} pairs behave like their "
            f"clean input ({float(before.float().mean()):.0%} before)",
        )
        if not (~before).any():
            out |= {"status": "reached", "message": "no pair needed rectifying"}
        return out | {
            "rectified_before": float(before.float().mean()),
            "rectified_after": float(after.float().mean()),
        }

    return measure


def add_rectify_parsers(sub) -> None:
    p = sub.add_parser(
        "fix", help="fix one misclassified test example (coar-edit), then report before/after"
    )
    add_model_args(p)
    add_edit_args(p, "coar-edit")
    p.add_argument(
        "--example", default="auto", help="test example index, or 'auto' (the first misclassified)"
    )
    p.set_defaults(fn=cmd_fix)

    p = sub.add_parser(
        "rectify",
        help="rectify corrupted inputs from clean / corrupted pairs "
        "(default: the trojan benchmark)",
    )
    add_model_args(p, data_default="fashion-mnist")
    add_edit_args(p, "rectify")
    p.add_argument(
        "--pairs",
        default=None,
        metavar="FILE",
        help=".safetensors with clean, corrupted [n, ...] and y [n] (with --model/--weights); "
        "default: the built-in trojaned zoo model",
    )
    p.add_argument(
        "--n", type=positive, default=1, help="trojan benchmark: clean / triggered pairs used"
    )
    p.set_defaults(fn=cmd_rectify)
