"""Depth scaling of decoder pruning on random-initialised GQA Llamas (hidden 512, 8 query heads,
2 KV heads, FFN 1376, vocabulary 2048) of 4, 8, 16, 32 layers, 8 sequences of 128 tokens:

* modhifi-llm (its defaults: uniform, self target, 20 % of block parameters): wall time of the
  whole edit per block (capture included), the median of the blocks' own times, and the peak
  resident memory added while pruning (RSS sampled every 20 ms, above the RSS at the call);
* the peer (Torch-Pruning, its LLM example's pruner, cache off): the time to build its
  dependency graph alone (its prune stops on the GQA head divisibility: see llm_peer).

Each depth runs in a fresh process (memory a run freed is not reused by the next), after one
warm-up edit of a 1-layer model so that what the libraries allocate once is not counted.
glibc's malloc raises its mmap threshold to the largest block freed, so the per-block float64
Grams (15 MB at FFN 1376) are later served from a heap that keeps what was freed: the peak then
varies by tens of MB from run to run, whatever the depth. ``--malloc pinned`` (the default, as
in benchmarks/memory.py) fixes the threshold at 128 KiB in the measured processes
(``MALLOC_MMAP_THRESHOLD_=131072``), so the peak shows what the editor holds;
``--malloc default`` measures glibc as is.

    python benchmarks/llm_scaling.py --depths 4 8 16 32 --out benchmarks/results
    python benchmarks/llm_scaling.py --malloc default --name llm_scaling_glibc_default \\
        --out benchmarks/results

Writes NAME.{json,md} (default llm_scaling) to --out (default: a scratch folder, see benchmarks/_results.py).
Used by benchmarks/llm.py (``depth_row``, in its own process)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import torch

SEQS, SEQ_LEN, VOCAB = 8, 128, 2048


def llama(layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=SEQ_LEN,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def depth_row(layers: int, threads: int = 1) -> dict:
    """One row of the table: modhifi-llm's time per block and peak memory, the peer's graph."""
    import llm_peer
    from llm import PeakRSS

    import pluginedit as pe

    torch.set_num_threads(threads)
    ids = torch.randint(0, VOCAB, (SEQS, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pe.edit(llama(1), "modhifi-llm", data=ids[:2], params=0.2, progress=False)  # warm-up
    model = llama(layers)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    with warnings.catch_warnings(), PeakRSS() as mem:
        warnings.simplefilter("ignore")
        t, cpu = time.perf_counter(), time.process_time()
        rec = pe.edit(model, "modhifi-llm", data=ids, params=0.2, progress=False)
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
    blocks = rec.info["blocks"]
    del model, rec
    peer = llama(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = llm_peer.graph_seconds(peer, ids[:1])
    row = {
        "layers": layers,
        "params": sum(p.numel() for p in peer.parameters()),
        "weights_mb": round(weights, 1),
        "tokens": SEQS * SEQ_LEN,
        "modhifi_seconds": round(secs, 2),
        "modhifi_per_block_s": round(secs / layers, 3),
        "modhifi_cpu_per_block_s": round(cpu / layers, 3),
        "modhifi_block_median_s": round(sorted(b["seconds"] for b in blocks)[layers // 2], 3),
        "modhifi_peak_added_mb": round(mem.added_mb, 1),
        "peer_graph_seconds": round(graph, 2),
        "peer_graph_per_block_s": round(graph / layers, 3),
    }
    print(row, file=sys.stderr, flush=True)
    return row


def fresh_row(layers: int, threads: int, malloc: str = "pinned") -> dict:
    """``depth_row`` in a new python process."""
    cmd = [sys.executable, __file__, "--one", str(layers), "--threads", str(threads)]
    env = dict(os.environ) | ({"MALLOC_MMAP_THRESHOLD_": "131072"} if malloc == "pinned" else {})
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode:
        raise RuntimeError(f"depth {layers} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], threads: int, malloc: str) -> str:
    how = "MALLOC_MMAP_THRESHOLD_=131072" if malloc == "pinned" else "glibc malloc at its defaults"
    lines = [
        "# Depth scaling of modhifi-llm: random-initialised GQA Llamas",
        "",
        f"Hidden 512, 8 query heads, 2 KV heads, FFN 1376; {rows[0]['tokens']} calibration "
        f"tokens (8 x 128); {threads} torch thread(s), CPU. modhifi-llm at its defaults, 20 % "
        "of block parameters. 's per block': the whole edit (capture included) over the "
        "layers, in wall and in CPU time (the machine is shared: CPU time is the steadier); "
        "'median block s': one block's statistics, choice, refit and cut (wall). 'peak +MB': "
        "the peak RSS above that at the call (each depth in a fresh process, after a warm-up "
        f"edit; {how}); 'weights MB': the dense model's float32 weights, for scale. Peer: Torch-Pruning's "
        "dependency-graph build alone (cache off).",
        "",
        "| layers | params | weights MB | modhifi s | s per block | CPU s per block | median block "
        "s | peak +MB | peer graph s | peer graph s per block |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layers']} | {r['params']:,} | {r['weights_mb']} | {r['modhifi_seconds']} | "
            f"{r['modhifi_per_block_s']} | {r['modhifi_cpu_per_block_s']} | "
            f"{r['modhifi_block_median_s']} | "
            f"{r['modhifi_peak_added_mb']} | {r['peer_graph_seconds']} | "
            f"{r['peer_graph_per_block_s']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import _results

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a fresh_row child
    ap.add_argument(
        "--malloc",
        default="pinned",
        choices=["pinned", "default"],
        help="pinned: MALLOC_MMAP_THRESHOLD_=131072 in the measured processes",
    )
    ap.add_argument("--out", default=None, help=_results.out_help("llm_scaling"))
    ap.add_argument("--name", default="llm_scaling", help="results file: NAME.json, NAME.md")
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(depth_row(args.one, args.threads)))
        return 0
    torch.set_num_threads(args.threads)  # what the stamp reports: the children's setting
    rows = [fresh_row(d, args.threads, args.malloc) for d in args.depths]
    text = markdown(rows, args.threads, args.malloc)
    _results.write(_results.out_dir(args.out, "llm_scaling") / args.name, rows, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
