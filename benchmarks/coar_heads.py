"""COAR over attention heads of a real transformer, one command:  python benchmarks/coar_heads.py

all-MiniLM-L6-v2 (real weights, offline) with a linear probe on its sentence embeddings that
tells four topics apart: docstring sentences of the Python stdlib's concurrency modules, its data
formats, its date/number modules, and of torch/numpy. Components = the 72 attention heads (6
layers x 12); a head is ablated by zeroing its context vectors (= its value rows and bias).
LDS on 200 fresh masks (alpha = 5 %) of held-out sentences for least squares against the number
of masks, the chord prior, ridge + chord, and the leave-one-out and gradient x parameter
baselines. Writes coar_heads.{json,md} to --out (default: a scratch folder, see
benchmarks/_results.py; --out benchmarks/results updates the committed results)."""

from __future__ import annotations

import argparse
import os
import platform
import time

import _results  # the helper beside this script
import torch
from torch import nn

from pluginedit.contrib import hf
from pluginedit.scorers.coar import (
    chord_prior,
    gradient_times_parameter,
    leave_one_out,
    masked_margins,
    pearson,
    solve,
)
from pluginedit.scorers.masks import component_slices, keep_masks
from pluginedit.stats import AblationSums

TOPICS = {
    "concurrency": ("asyncio", "threading", "subprocess"),
    "formats": ("json", "csv", "pickle", "sqlite3", "zipfile", "tarfile", "email"),
    "numbers and dates": ("datetime", "calendar", "decimal", "fractions", "statistics", "random"),
    "torch and numpy": ("torch.nn", "torch.optim", "torch.utils.data", "numpy"),
}
ALPHA, CHUNK, LDS_MASKS = 0.05, 8, 200


class Probe(nn.Module):
    """MiniLM, mean pooling, L2 normalisation (the sentence-transformers embedding), a Linear."""

    def __init__(self, bert, classes: int):
        super().__init__()
        self.bert, self.head = bert, nn.Linear(bert.config.hidden_size, classes)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head(nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))


def corpus(train_fraction: float = 0.5):
    """(sentences, labels) per split: a stable-hash ``train_fraction`` of each topic to train the
    probe on, the rest held out."""
    train, test = ([], []), ([], [])
    for label, mods in enumerate(TOPICS.values()):
        sents = hf.english_sentences(mods)
        ranked = hf.split_corpus(sents, len(sents), 0)[0]  # a stable hash order
        for i, s in enumerate(ranked):
            split = train if i < train_fraction * len(ranked) else test
            split[0].append(s)
            split[1].append(label)
    return train, test


def fit_probe(model: Probe, tok, sentences, labels, steps: int = 200) -> None:
    """Logistic regression of the frozen embeddings (L-BFGS, weight decay 1e-3)."""
    with torch.no_grad():
        z = hf.embed(model.bert, tok, sentences)
    y = torch.tensor(labels)
    opt = torch.optim.LBFGS(model.head.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (
            nn.functional.cross_entropy(model.head(z), y) + 1e-3 * model.head.weight.square().sum()
        )
        loss.backward()
        return loss

    opt.step(closure)


def encode(tok, sentences):
    enc = tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def summary(corr):
    return {"mean": float(corr.mean()), "p10": float(corr.quantile(0.1)), "min": float(corr.min())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=None, help=_results.out_help("coar_heads"))
    args = ap.parse_args(argv)
    out = _results.out_dir(args.out, "coar_heads")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    bert, tok = hf.load_minilm()
    (tr_s, tr_y), (te_s, te_y) = corpus()
    model = Probe(bert, len(TOPICS)).eval()
    fit_probe(model, tok, tr_s, tr_y)
    x_all, y_all = encode(tok, te_s), torch.tensor(te_y)
    with torch.no_grad():
        acc = float((model(**x_all).argmax(1) == y_all).float().mean())
    g = torch.Generator().manual_seed(0)  # 32 held-out sentences, 8 per topic
    idx = torch.cat(
        [
            (y_all == k)
            .nonzero()
            .flatten()[torch.randperm(int((y_all == k).sum()), generator=g)[:8]]
            for k in range(len(TOPICS))
        ]
    )
    x = encode(tok, [te_s[i] for i in idx])
    y = y_all[idx]
    paths = [f"bert.encoder.layer.{i}.attention.self" for i in range(bert.config.num_hidden_layers)]
    slices = component_slices(model, paths)
    c = sum(w for _, _, w in slices)
    res = {
        "machine": platform.processor() or platform.machine(),
        "probe_test_accuracy": acc,
        "test_sentences": len(te_s),
        "train_sentences": len(tr_s),
        "examples": len(y),
        "components": c,
        "alpha": ALPHA,
        "lds_masks": LDS_MASKS,
    }
    t = time.perf_counter()
    lds_masks = keep_masks(10_000, 0, LDS_MASKS, c, ALPHA)
    actual = masked_margins(model, x, y, slices, lds_masks, CHUNK)
    res["seconds_per_mask"] = (time.perf_counter() - t) / LDS_MASKS

    def lds_of(w, b):
        return summary(pearson(actual, lds_masks.double() @ w.double() + b.double()))

    rows = []
    loo = leave_one_out(model, x, y, paths, chunk=CHUNK)
    rows.append({"estimator": "leave-one-out", "fwd_eq": c + 1} | lds_of(loo.w, loo.b))
    gxp = gradient_times_parameter(model, x, y, paths)
    rows.append({"estimator": "gradient x parameter", "fwd_eq": 3} | lds_of(gxp.w, gxp.b))
    chord = chord_prior(model, x, y, slices, 40, ALPHA, 0)
    rows.append(
        {"estimator": "chord prior (40 passes)", "fwd_eq": 120} | lds_of(chord, torch.zeros(len(y)))
    )
    masks = keep_masks(0, 0, 1000, c, ALPHA)
    y_m = masked_margins(model, x, y, slices, masks, CHUNK).double()
    for n in (100, 250, 500, 1000):
        ols = AblationSums(c, len(y), folds=5)
        ols.update(masks[:n], y_m[:n])
        w, b, _ = solve(ols, "ols", None)
        rows.append({"estimator": f"OLS, {n} masks", "fwd_eq": n} | lds_of(w, b))
        if n <= 250:
            rid = AblationSums(c, len(y), folds=5)
            rid.update(masks[:n], y_m[:n] - masks[:n].double() @ chord)
            w, b, _ = solve(rid, "ridge", None)
            rows.append(
                {"estimator": f"ridge + chord40, {n} masks", "fwd_eq": n + 120}
                | lds_of(w + chord, b)
            )
    res["rows"] = rows
    res["wall_s"] = time.perf_counter() - t
    lines = [
        "# COAR over the attention heads of all-MiniLM-L6-v2 (topic probe)",
        "",
        f"Machine: {res['machine']}. `python benchmarks/coar_heads.py`. Probe test accuracy "
        f"{acc:.3f} ({len(te_s)} held-out sentences); {len(y)} attributed sentences, {c} heads, "
        f"alpha {ALPHA}, LDS on {LDS_MASKS} fresh masks; {res['seconds_per_mask'] * 1e3:.0f} ms per mask.",
        "",
        "| estimator | forward-equivalents | mean LDS | p10 | min |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['estimator']} | {r['fwd_eq']} | {r['mean']:.3f} | {r['p10']:.3f} | {r['min']:.3f} |"
        for r in rows
    ]
    _results.write(out / "coar_heads", res, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
