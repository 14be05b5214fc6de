"""Depth scaling of decoder pruning on random-initialised GQA Llamas (hidden 512, 8 query heads,
2 KV heads, FFN 1376, vocabulary 2048) of 4, 8, 16, 32 layers, a few sequences:

* modhifi-llm (uniform, dense target, 20 % of block parameters): wall time per block and the
  peak resident memory added while pruning;
* the peer (Torch-Pruning, its LLM example's pruner, cache off): the time to build its
  dependency graph alone (its prune stops on the GQA head divisibility: see llm_peer).

    python benchmarks/llm_scaling.py --depths 4 8 16 32

Used by benchmarks/llm.py (``scaling``); runnable alone (prints the rows as JSON)."""

from __future__ import annotations

import argparse
import json
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
    model = llama(layers)
    with warnings.catch_warnings(), PeakRSS() as mem:
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        rec = pe.edit(model, "modhifi-llm", data=ids, params=0.2, progress=False)
        secs = time.perf_counter() - t
    blocks = rec.info["blocks"]
    peer = llama(layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = llm_peer.graph_seconds(peer, ids[:1])
    row = {
        "layers": layers,
        "params": rec.info["params_before"],
        "tokens": SEQS * SEQ_LEN,
        "modhifi_seconds": round(secs, 2),
        "modhifi_per_block_s": round(secs / layers, 3),
        "modhifi_block_median_s": round(sorted(b["seconds"] for b in blocks)[layers // 2], 3),
        "modhifi_peak_added_mb": round(mem.added_mb, 1),
        "peer_graph_seconds": round(graph, 2),
        "peer_graph_per_block_s": round(graph / layers, 3),
    }
    print(row, flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print(json.dumps([depth_row(d, args.threads) for d in args.depths]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
