"""all-MiniLM-L6-v2 pruned through the plugin API (pe.edit "modhifi-p"): mean cosine of sentence
embeddings to the dense model on held-out sentences, with and without the least-squares refits.

    python benchmarks/minilm_api.py

Calibration: 256 docstring sentences; held out: 300 others (``contrib.hf.split_corpus``).
Writes minilm_api.{json,md} to --out (default: a scratch folder, see benchmarks/_results.py;
--out benchmarks/results updates the committed results)."""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _results  # noqa: E402  (the helper beside this script)

import pluginedit as pe  # noqa: E402
from pluginedit.contrib import hf  # noqa: E402

SETTINGS = [(0.1, 0), (0.2, 0), (0.3, 0), (0.0, 2), (0.2, 2)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=None, help=_results.out_help("minilm_api"))
    args = ap.parse_args(argv)
    out = _results.out_dir(args.out, "minilm_api")
    model, tok = hf.load_minilm()
    calib, held = hf.split_corpus(hf.english_sentences(), 256, 300)
    data, dense = hf.text_split(tok, calib), hf.embed(model, tok, held)
    params0 = sum(p.numel() for p in model.parameters())
    rows = []
    for ratio, heads in SETTINGS:
        row = {"ffn_removed": ratio, "heads_removed_per_layer": heads}
        for comp in (False, True):
            m = copy.deepcopy(model)
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pe.edit(
                    m, "modhifi-p", data=data, ratio=max(ratio, 1e-9), heads=heads, compensate=comp
                )
            row["with" if comp else "without"] = hf.cosine_to_dense(dense, m, tok, held)
            row["seconds"] = time.perf_counter() - t
            row["params_removed"] = 1 - sum(p.numel() for p in m.parameters()) / params0
        rows.append(row)
        print(row, flush=True)
    lines = [
        '# all-MiniLM-L6-v2 through pe.edit("modhifi-p"): mean cosine to the dense embeddings',
        "",
        "Command: `python benchmarks/minilm_api.py`; 256 calibration / 300 held-out sentences.",
        "",
        "| FFN neurons removed | heads removed per layer | params removed | cosine without refit | cosine with refit |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['ffn_removed']:.0%} | {r['heads_removed_per_layer']} | {r['params_removed']:.3f} | "
        f"{r['without']:.4f} | {r['with']:.4f} |"
        for r in rows
    ]
    _results.write(out / "minilm_api", rows, "\n".join(lines) + "\n", indent=2)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
