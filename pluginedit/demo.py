"""``pluginedit demo``: why the toolkit exists, on the embedded digits data.

The same CNN is pruned to the same size three ways: the usual recipe (L1 norms, then fine-tune),
the same L1 pruning without fine-tuning, and ModHiFi-P (fidelity scores, least-squares
compensation, BN recalibration) without fine-tuning. The ModHiFi-P model is then saved without
pickle, reloaded in a fresh Python process and re-evaluated there."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import api, report
from .contrib import data, train
from .core.progress import bar, shown, wanted

FINETUNE_LR = 1e-3


def _row(name: str, model, bundle, seconds: float) -> dict:
    return {
        "method": name,
        **report.evaluate(model, bundle.test, bundle.num_classes),
        "seconds": seconds,
    }


def _prune(dense, bundle, calib, method: str, ratio: float, finetune: int, seed: int):
    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    example = calib.x[:1]
    if method == "modhifi-p":
        record = api.edit(model, "modhifi-p", data=calib, example_inputs=example, ratio=ratio)
    else:
        scores = api.score(model, "l1", example_inputs=example)
        record = api.edit(model, "prune", scores, example_inputs=example, ratio=ratio)
    if finetune:
        train.fit(model, bundle.train, finetune, lr=FINETUNE_LR, seed=seed, progress=wanted())
    return model, record, time.perf_counter() - t0


def _reload_elsewhere(model, record, bundle, folder: Path) -> dict:
    """Save, reload in a new process, and compare its logits on the test split with ours."""
    api.save(model, folder, record)
    save_file({"x": bundle.test.x.contiguous()}, str(folder / "test_x.safetensors"))
    code = (
        "import pluginedit as pe, torch; from safetensors.torch import load_file, save_file;"
        f"m = pe.load({str(folder)!r}); x = load_file({str(folder / 'test_x.safetensors')!r})['x'];"
        "torch.set_grad_enabled(False);"
        f"save_file({{'y': m(x).contiguous()}}, {str(folder / 'logits.safetensors')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    theirs = load_file(str(folder / "logits.safetensors"))["y"]
    with torch.no_grad():
        ours = model.eval()(bundle.test.x)
    acc = (theirs.argmax(1) == bundle.test.y).float().mean().item()
    return {
        "folder": str(folder),
        "accuracy": acc,
        "max_abs_logit_diff": float((theirs - ours).abs().max()),
    }


def _table(rows: list[dict], dense: dict) -> str:
    """Each method beside the dense model; a speed-up is shown only where the timings support
    it (``report.speedup``), else the reason is printed below the table."""
    head = (
        f"{'method':34s} {'accuracy':>8s} {'params':>9s} {'MACs':>11s} "
        f"{'latency ms':>10s} {'speed-up':>8s} {'time s':>7s}"
    )
    lines, reasons = [head, "-" * len(head)], set()
    for r in [dense] + rows:
        sp = report.speedup(dense["latency"], r["latency"]) if r is not dense else None
        if sp is not None and not sp["significant"]:
            reasons.add(sp["reason"])
        shown = "" if sp is None else f"{sp['ratio']:.2f}x" if sp["significant"] else "n.s."
        lines.append(
            f"{r['method']:34s} {r['accuracy']:8.4f} {r['params']:9,d} {r['macs']:11,d} "
            f"{r['latency_ms']:10.3f} {shown:>8s} {r.get('seconds', 0.0):7.1f}"
        )
    lines += [f"speed-up n.s. (not significant): {why}" for why in sorted(reasons)]
    return "\n".join(lines)


def figure(rows: list[dict], dense: dict):
    """Accuracy against parameters, one labelled point per method; labels that would overlap
    (two methods at the same accuracy) are moved apart, and all stay inside the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = [dense] + rows
    right = max(r["params"] for r in points)
    texts = []
    for r in points:
        ax.scatter(r["params"], r["accuracy"], s=60)
        at_right = r["params"] > 0.8 * right  # label on the left: it would leave the axes
        texts.append(
            ax.annotate(
                f"{r['method']} ({r['accuracy']:.3f})",
                (r["params"], r["accuracy"]),
                textcoords="offset points",
                xytext=(-8 if at_right else 8, -4),
                ha="right" if at_right else "left",
                fontsize=8,
            )
        )
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, right * 1.1)
    ax.set_title("digits CNN: the same size, three ways")
    fig.tight_layout()
    _separate(fig, texts)
    return fig


def _separate(fig, texts, gap: float = 2.0) -> None:
    """Move each label down (in points) until its box overlaps no label placed before it."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for t in texts:
        for _ in range(20):
            box = t.get_window_extent(renderer).expanded(1.0, 1.05)
            hit = next((b for b in placed if box.overlaps(b)), None)
            if hit is None:
                break
            dx, dy = t.get_position()  # offset points
            shift = (box.y1 - hit.y0) * 72 / fig.dpi + gap
            t.set_position((dx, dy - shift))
        placed.append(t.get_window_extent(renderer))


def _plot(rows: list[dict], dense: dict, path: str) -> None:
    fig = figure(rows, dense)  # selects the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)


METHODS = (
    ("l1 + fine-tune (the usual recipe)", "l1", True),
    ("l1, no fine-tuning", "l1", False),
    ("modhifi-p, no fine-tuning", "modhifi-p", False),
)


def run(
    ratio: float = 0.5,
    finetune_epochs: int = 15,
    seed: int = 0,
    save: str | None = None,
    report_path: str | None = None,
    plot_path: str | None = None,
    progress: bool = False,
) -> dict:
    """The demo; ``progress`` shows a bar over the methods and every long step inside them
    (training the dense model, calibration passes, fine-tuning). The report's ``before`` is
    the dense model and ``after`` the ModHiFi-P model (the one saved); ``rows`` has every
    method."""
    with shown(wanted(progress)):
        bundle = data.load_digits()
        dense_model = train.pretrained("vgg", bundle, seed=seed)
        calib = bundle.train.subset(1024, seed=seed)
        dense = _row("dense", dense_model, bundle, 0.0)
        rows, kept = [], {}
        for name, method, ft in bar(METHODS, desc="demo: prune three ways"):
            epochs = finetune_epochs if ft else 0
            model, record, seconds = _prune(dense_model, bundle, calib, method, ratio, epochs, seed)
            rows.append(_row(name, model, bundle, seconds))
            kept[name] = (model, record)
    print(_table(rows, dense))
    model, record = kept[METHODS[-1][0]]
    folder = Path(save) if save else Path(tempfile.mkdtemp(prefix="pluginedit-demo-"))
    reload = _reload_elsewhere(model, record, bundle, folder)
    print(
        f"modhifi-p model saved to {folder}; reloaded in a fresh process: accuracy "
        f"{reload['accuracy']:.4f}, max |logit difference| {reload['max_abs_logit_diff']:.2e}"
    )
    out = {
        "model": "vgg",
        "data": bundle.name,
        "before": dense,
        "after": rows[-1],
        "edit": record.summary(),
        "dense": dense,
        "rows": rows,
        "ratio": ratio,
        "reload": reload,
        "finetune_epochs": finetune_epochs,
    }
    if report_path:
        Path(report_path).write_text(json.dumps(out, indent=2))
    if plot_path:
        _plot(rows, dense, plot_path)
    return out
