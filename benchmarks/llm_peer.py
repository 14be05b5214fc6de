"""The peer on a decoder LLM: Torch-Pruning's ``BasePruner`` (``MetaPruner``) with the settings of
its LLM example (examples/LLMs/prune_llm.py in VainF/Torch-Pruning): GroupMagnitudeImportance
(p=2, mean), local pruning, heads pruned with ``num_heads`` of q/k/v (GQA: k/v with the KV head
count), head dims kept, lm_head ignored, round_to=4, the model's attributes updated after the
prune as the example does; the cache off (``use_cache=False`` in the config: with it on the
graph follows the KV-cache concatenation and hangs, issue 25).

    python benchmarks/llm_peer.py --ratio 0.1 --calib 4 --eval 8

The example prunes the hidden width too, so its ratio removes more than that share of the block
parameters: ``matched_ratio`` gives the ratio whose parameter count matches a share of block
parameters removed (every width times (1 - r): about 1 - (1 - r)^2 of each weight matrix).
Used by benchmarks/llm.py (``peer`` rows) and runnable alone; only benchmarks import this."""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback

import torch


def matched_ratio(share: float) -> float:
    """The example's pruning ratio that removes about ``share`` of the block parameters."""
    return 1 - math.sqrt(1 - share)


def prune(model, example_ids: torch.Tensor, ratio: float) -> dict:
    """Run the example's pruner on ``model`` in place: {"seconds", "graph_seconds", "error"}."""
    import torch_pruning as tp

    model.config.use_cache = False
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn") and hasattr(m, "q_proj"):
            num_heads[m.q_proj] = model.config.num_attention_heads
            num_heads[m.k_proj] = model.config.num_key_value_heads
            num_heads[m.v_proj] = model.config.num_key_value_heads
    gqa = model.config.num_attention_heads != model.config.num_key_value_heads
    t0 = time.perf_counter()
    out = {"ratio": round(ratio, 4), "error": None, "graph_seconds": None}
    try:
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs=example_ids,
            importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
            global_pruning=False,
            output_transform=lambda x: x.logits,
            pruning_ratio=ratio,
            ignored_layers=[model.lm_head],
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
            round_to=4,
        )
        out["graph_seconds"] = round(time.perf_counter() - t0, 2)
        for g in pruner.step(interactive=True):
            g.prune()
        _update_attributes(model, gqa)
    except Exception as e:  # the peer's own failure is the measurement
        out["error"] = f"{type(e).__name__}: {e}"
        out["where"] = traceback.format_exc().strip().splitlines()[-3][:200]
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _update_attributes(model, gqa: bool) -> None:
    """The example's attribute update after pruning (heads, hidden size, intermediate size)."""
    model.config.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            m.hidden_size = m.q_proj.out_features
            m.num_heads = m.hidden_size // m.head_dim
            model.config.num_attention_heads = m.num_heads
            if not gqa:
                m.num_key_value_heads = m.num_heads
                model.config.num_key_value_heads = m.num_heads
            if hasattr(m, "num_key_value_groups"):
                m.num_key_value_groups = m.num_heads // model.config.num_key_value_heads
        elif name.endswith("mlp") and hasattr(m, "gate_proj"):
            m.hidden_size = m.gate_proj.in_features
            model.config.intermediate_size = m.gate_proj.out_features


def graph_seconds(model, example_ids: torch.Tensor) -> float:
    """Time to build the peer's dependency graph alone (the pruner's constructor)."""
    import torch_pruning as tp

    model.config.use_cache = False
    t = time.perf_counter()
    tp.DependencyGraph().build_dependency(
        model, example_inputs=example_ids, output_transform=lambda x: x.logits
    )
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--share", type=float, default=0.2, help="block parameter share to match")
    ap.add_argument("--eval", type=int, default=8, help="evaluation sequences")
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from pluginedit.contrib import llm

    model, tok = llm.smollm2()
    ev = llm.token_chunks(tok, llm.kjv("evaluation"), args.seq_len, args.eval)
    example = torch.tensor(tok.encode("Hello world."))[None]
    res = prune(model, example, matched_ratio(args.share))
    res["params"] = sum(p.numel() for p in model.parameters())
    if res["error"] is None:
        res["ppl"] = round(llm.perplexity(model, ev), 3)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
