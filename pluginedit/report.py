"""Before/after reports: accuracy overall and per class, parameters, MACs and measured latency;
JSON, a printed table, and an optional PNG."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from .capture import Split, model_device
from .core.batches import batch_to, call, take_rows
from .core.files import written_whole
from .core.outputs import output
from .evaluate import accuracy
from .graph.groups import count_ops_and_params

METRICS = ("accuracy", "per_class_accuracy", "params", "macs", "latency_ms")


@torch.no_grad()
def latency_ms(
    model: nn.Module, example, warmup: int = 5, repeats: int = 30, stat=statistics.median
) -> float:
    """Wall time of one forward pass of ``example`` after warm-up: the median of ``repeats``
    timed runs (``stat=min`` is the steadier choice for A/B comparisons on a busy machine)."""
    model.eval()
    example = batch_to(example, model_device(model))
    for _ in range(warmup):
        call(model, example)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call(model, example)
        times.append((time.perf_counter() - t0) * 1e3)
    return stat(times)


def evaluate(model: nn.Module, test: Split, num_classes: int, latency_batch: int = 64) -> dict:
    """Accuracy (None for a model whose output is not class logits, e.g. a sentence encoder),
    parameters, MACs and latency."""
    example = take_rows(test.x, slice(0, latency_batch))
    with torch.no_grad():
        logits = (
            output(
                model.eval(), batch_to(take_rows(example, slice(0, 1)), model_device(model))
            ).ndim
            == 2
        )
    acc, per_class = accuracy(model, test, num_classes) if logits else (None, [None] * num_classes)
    macs, params = count_ops_and_params(
        model, batch_to(take_rows(example, slice(0, 1)), model_device(model))
    )
    return {
        "accuracy": acc,
        "per_class_accuracy": per_class,
        "params": int(params),
        "macs": int(macs),
        "latency_ms": latency_ms(model, example),
    }


def forgetting(per_class: list[float], forget_class: int) -> dict:
    """Forgotten-class accuracy and the mean accuracy of the retained classes."""
    kept = [a for k, a in enumerate(per_class) if k != forget_class and a is not None]
    return {
        "forgotten_class": forget_class,
        "forgotten_accuracy": per_class[forget_class],
        "retained_accuracy": sum(kept) / len(kept) if kept else None,
    }


def table(report: dict) -> str:
    before, after = report["before"], report["after"]
    rows = (
        [
            (
                "accuracy",
                f"{before['accuracy']:.4f}",
                f"{after['accuracy']:.4f}",
                f"{after['accuracy'] - before['accuracy']:+.4f}",
            )
        ]
        if before["accuracy"] is not None
        else []
    )
    rows += [
        (
            "params",
            f"{before['params']:,}",
            f"{after['params']:,}",
            f"{before['params'] / max(after['params'], 1):.2f}x fewer",
        ),
        (
            "MACs",
            f"{before['macs']:,}",
            f"{after['macs']:,}",
            f"{before['macs'] / max(after['macs'], 1):.2f}x fewer",
        ),
        (
            "latency ms",
            f"{before['latency_ms']:.3f}",
            f"{after['latency_ms']:.3f}",
            f"{before['latency_ms'] / max(after['latency_ms'], 1e-9):.2f}x faster",
        ),
    ]
    for key in ("forgotten_accuracy", "retained_accuracy"):
        if key in before and before[key] is not None and after[key] is not None:
            rows.append(
                (
                    key.replace("_", " "),
                    f"{before[key]:.4f}",
                    f"{after[key]:.4f}",
                    f"{after[key] - before[key]:+.4f}",
                )
            )
    widths = [
        max(len(r[i]) for r in rows + [("metric", "before", "after", "change")]) for i in range(4)
    ]
    line = lambda r: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
    )
    return "\n".join(
        [line(("metric", "before", "after", "change")), line(tuple("-" * w for w in widths))]
        + [line(r) for r in rows]
    )


def write(report: dict, path: str | Path) -> None:
    text = json.dumps(report, indent=2)
    with written_whole(path) as tmp:
        tmp.write_text(text)


def plot(report: dict, path: str | Path, class_names=None) -> None:
    """Per-class accuracy before and after, as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a class absent from the test data (None) is drawn as an empty bar
    before, after = (
        [a or 0.0 for a in report[s]["per_class_accuracy"]] for s in ("before", "after")
    )
    k = range(len(before))
    fig, ax = plt.subplots(figsize=(max(6, len(before) * 0.7), 3.5))
    ax.bar([i - 0.2 for i in k], before, 0.4, label=f"before ({report['before']['accuracy']:.3f})")
    ax.bar([i + 0.2 for i in k], after, 0.4, label=f"after ({report['after']['accuracy']:.3f})")
    ax.set_xticks(list(k), class_names or [str(i) for i in k], rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title(report.get("title", "before / after edit"))
    fig.tight_layout()
    with written_whole(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix[1:] or "png")
    plt.close(fig)
