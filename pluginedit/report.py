"""Before/after reports: accuracy overall and per class, parameters, MACs and measured latency;
JSON, a printed table, and an optional PNG."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from .capture import Split, model_device
from .core.batches import batch_to, call, take_rows
from .core.files import written_whole
from .core.outputs import output
from .core.progress import wanted
from .evaluate import accuracy
from .graph.groups import count_ops_and_params

METRICS = ("accuracy", "per_class_accuracy", "params", "macs", "latency_ms")
# Above this many runnable tasks per core (os.getloadavg), other work shares the cores and the
# timings measure the machine as much as the model.
BUSY_LOAD_PER_CORE = 1.5
# A model whose interquartile range exceeds this fraction of its median was timed too noisily to
# compare with another.
MAX_RELATIVE_SPREAD = 0.25
# Accuracy "at chance" is within this of 1 / num_classes; a drop beyond DROP_LIMIT is reported.
CHANCE_MARGIN = 0.05
DROP_LIMIT = 0.05


def machine_load() -> dict:
    """The 1-minute load average and the cores it is shared by (load None where the platform
    has no getloadavg)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {"load_1min": load, "cores": os.cpu_count() or 1}


def spread(times_ms: list[float]) -> dict:
    """Median, quartiles and extremes of timed runs (ms)."""
    q1, median, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return {
        "median": median,
        "q1": q1,
        "q3": q3,
        "min": min(times_ms),
        "max": max(times_ms),
        "repeats": len(times_ms),
    }


@torch.no_grad()
def latency(
    model: nn.Module,
    example,
    warmup: int = 5,
    repeats: int = 30,
    min_repeats: int = 10,
    budget_s: float = 5.0,
    timer=time.perf_counter,
    load=machine_load,
) -> dict:
    """Forward passes of ``example`` after ``warmup``: ``repeats`` timed runs, fewer (never
    below ``min_repeats``) once ``budget_s`` seconds are spent, summarised by ``spread`` with the
    machine's load taken before and after (the higher kept). ``timer`` and ``load`` are
    injectable so the decisions built on them can be tested without a clock."""
    model.eval()
    example = batch_to(example, model_device(model))
    for _ in range(warmup):
        call(model, example)
    first = load()
    times: list[float] = []
    start = timer()
    while len(times) < max(repeats, 2):
        t0 = timer()
        call(model, example)
        t1 = timer()
        times.append((t1 - t0) * 1e3)
        if len(times) >= max(min_repeats, 2) and t1 - start > budget_s:
            break
    last = load()
    loads = [x["load_1min"] for x in (first, last) if x["load_1min"] is not None]
    return spread(times) | {"load_1min": max(loads) if loads else None, "cores": last["cores"]}


def latency_ms(
    model: nn.Module, example, warmup: int = 5, repeats: int = 30, stat=statistics.median
) -> float:
    """One number: ``stat`` of ``repeats`` timed runs (``stat=min`` is the steadier choice for
    A/B comparisons on a busy machine). Reports use ``latency``, which keeps the spread."""
    model.eval()
    example = batch_to(example, model_device(model))
    with torch.no_grad():
        for _ in range(warmup):
            call(model, example)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call(model, example)
            times.append((time.perf_counter() - t0) * 1e3)
    return stat(times)


def speedup(before: dict, after: dict) -> dict:
    """Whether ``after`` (a ``latency`` summary) is measurably faster or slower than ``before``:
    the ratio of medians, shown only when neither timing is unreliable (a busy machine, a spread
    above MAX_RELATIVE_SPREAD of the median) and the interquartile ranges do not overlap."""
    ratio = before["median"] / max(after["median"], 1e-9)
    out = {"ratio": ratio, "significant": False, "reason": None}
    for side in (before, after):
        load, cores = side.get("load_1min"), side.get("cores") or 1
        if load is not None and load > BUSY_LOAD_PER_CORE * cores:
            out["reason"] = f"machine busy (load {load:.1f} on {cores} cores)"
            return out
    worst = max((s["q3"] - s["q1"]) / max(s["median"], 1e-9) for s in (before, after))
    if worst > MAX_RELATIVE_SPREAD:
        out["reason"] = f"timings too spread (interquartile range {worst:.0%} of the median)"
    elif before["q1"] <= after["q3"] and after["q1"] <= before["q3"]:
        out["reason"] = "the difference is within the spread of the timings"
    else:
        out["significant"] = True
    return out


def health(report: dict, num_classes: int) -> dict:
    """What the edit did to accuracy (retained-class accuracy after forgetting): ``destroyed``
    when it is within CHANCE_MARGIN of chance or keeps less than half of the dense model's
    accuracy above chance, ``damaged`` when it fell by more than DROP_LIMIT, else ``kept``."""
    key = "retained_accuracy" if "retained_accuracy" in report["after"] else "accuracy"
    b, a = report["before"].get(key), report["after"].get(key)
    if a is None or b is None:
        return {"status": "unknown", "message": "no accuracy to compare (not a classifier)"}
    what, chance = key.replace("_", " "), 1 / num_classes
    change = f"{what} {b:.4f} -> {a:.4f}"
    out = {"status": "kept", "metric": key, "drop": b - a, "chance": chance}
    if b > chance + CHANCE_MARGIN and (
        a <= chance + CHANCE_MARGIN or a - chance < 0.5 * (b - chance)
    ):
        near = "at chance" if a <= chance + CHANCE_MARGIN else "far below the dense model"
        out |= {
            "status": "destroyed",
            "message": f"the edit destroyed the model: {change}, {near} "
            f"(chance is 1/{num_classes} = {chance:.2f})",
        }
    elif b - a > DROP_LIMIT:
        out |= {"status": "damaged", "message": f"large accuracy drop: {change} ({a - b:+.4f})"}
    else:
        out["message"] = f"{change} ({a - b:+.4f})"
    return out


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
    acc, per_class = (
        accuracy(model, test, num_classes, progress=wanted())
        if logits
        else (None, [None] * num_classes)
    )
    timing = latency(model, example)
    macs, params = count_ops_and_params(
        model, batch_to(take_rows(example, slice(0, 1)), model_device(model))
    )
    return {
        "accuracy": acc,
        "per_class_accuracy": per_class,
        "params": int(params),
        "macs": int(macs),
        "latency_ms": timing["median"],
        "latency": timing,
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
        (name, f"{before[key]:,}", f"{after[key]:,}", _fewer(before[key], after[key]))
        for name, key in (("params", "params"), ("MACs", "macs"))
    ]
    latency_row, note = _latency_row(before, after)
    rows.append(latency_row)
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
        + ([note] if note else [])
    )


def _fewer(before: int, after: int) -> str:
    return "same" if before == after else f"{before / max(after, 1):.2f}x fewer"


def _latency_row(before: dict, after: dict) -> tuple[tuple, str | None]:
    """The latency row (median [q1-q3] ms) and, when no speed-up is shown, the line saying why;
    a report without spreads (older JSON) shows its medians only."""
    b, a = before.get("latency"), after.get("latency")
    if not (b and a):
        return ("latency ms", f"{before['latency_ms']:.3f}", f"{after['latency_ms']:.3f}", ""), None
    sp = speedup(b, a)
    cell = lambda t: f"{t['median']:.3f} [{t['q1']:.3f}-{t['q3']:.3f}]"  # noqa: E731
    row = ("latency ms", cell(b), cell(a))
    if sp["significant"]:
        faster = sp["ratio"] >= 1
        ratio = sp["ratio"] if faster else 1 / sp["ratio"]
        return (*row, f"{ratio:.2f}x {'faster' if faster else 'slower'}"), None
    return (*row, "not significant"), (
        f"latency (median [interquartile range] of {b['repeats']} and {a['repeats']} runs): "
        f"no speed-up claimed, {sp['reason']}"
    )


def write(report: dict, path: str | Path) -> None:
    text = json.dumps(report, indent=2)
    with written_whole(path) as tmp:
        tmp.write_text(text)


def title(report: dict) -> str:
    """What the report describes: the editor (and its scorer / ratio), the model and the data."""
    edit = report.get("edit") or {}
    how = [f"{k} {report[k]}" for k in ("scorer", "ratio") if report.get(k) is not None]
    if report.get("forgotten_class") is not None:
        how.append(f"class {report['forgotten_class']} forgotten")
    name = edit.get("editor", "edit") + (f" ({', '.join(how)})" if how else "")
    where = " / ".join(str(report[k]) for k in ("model", "data") if report.get(k))
    return f"{name} on {where}" if where else name


def figure(report: dict, class_names=None):
    """Per-class accuracy before and after, as grouped bars, titled with the edit; the legend
    sits beside the axes so it never covers a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a class absent from the test data (None) is drawn as an empty bar
    before, after = (
        [a or 0.0 for a in report[s]["per_class_accuracy"]] for s in ("before", "after")
    )
    k = range(len(before))
    fig, ax = plt.subplots(figsize=(max(6, len(before) * 0.7) + 2, 4))
    acc = {s: report[s]["accuracy"] for s in ("before", "after")}
    label = lambda s: s if acc[s] is None else f"{s} ({acc[s]:.3f})"  # noqa: E731
    ax.bar([i - 0.2 for i in k], before, 0.4, label=label("before"))
    ax.bar([i + 0.2 for i in k], after, 0.4, label=label("after"))
    ax.set_xticks(list(k), class_names or [str(i) for i in k], rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars
    ax.set_title(report.get("title") or title(report))
    fig.tight_layout()
    return fig


def plot(report: dict, path: str | Path, class_names=None) -> None:
    """``figure`` written to ``path`` (its format from the extension; none: png)."""
    fig = figure(report, class_names)  # selects the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    with written_whole(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix[1:] or "png")
    plt.close(fig)
