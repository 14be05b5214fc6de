"""``pluginedit prune --hf DIR --text FILE ...``: a decoder LLM (a Hugging Face causal-LM folder)
pruned block by block by ``modhifi-llm`` on the tokens of a text file, one progress line per
block, perplexity before / after on ``--eval`` text, saved with ``--save`` (pluginedit.save)
and, when every block has the same shape, ``--save-pretrained`` (plain from_pretrained)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from .. import api
from ..core.errors import InputError, PluginEditError
from ._common import add_option_arg
from .checks import seed


def wants(argv: list[str]) -> bool:
    """Whether a command line is the decoder prune (``prune`` with ``--text``)."""
    return bool(argv) and argv[0] == "prune" and any(a.split("=")[0] == "--text" for a in argv)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pluginedit prune", description=__doc__)
    p.add_argument("--hf", required=True, metavar="DIR", help="causal-LM folder (config.json)")
    p.add_argument("--text", required=True, metavar="FILE", help="calibration text (UTF-8)")
    p.add_argument("--eval", default=None, metavar="FILE", help="text for perplexity")
    p.add_argument("--editor", default="modhifi-llm", choices=["modhifi-llm"])
    p.add_argument("--params", type=float, default=0.2, help="share of block params removed")
    p.add_argument("--calib", type=int, default=64, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--seed", type=seed, default=0)
    add_option_arg(p, "extra option for the editor, e.g. -o allocation=adaptive (repeatable)")
    p.add_argument("--save", default=None, metavar="DIR", help="pluginedit.save the result")
    p.add_argument(
        "--save-pretrained", default=None, metavar="DIR", help="save_pretrained (uniform shape)"
    )
    return p


def _chunks(tok, path: str, seq_len: int, count: int | None) -> torch.Tensor:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--text/--eval: no file {path}")
    ids = tok(file.read_text(encoding="utf-8"), return_tensors="pt")["input_ids"][0]
    n = len(ids) // seq_len if count is None else min(count, len(ids) // seq_len)
    if n < 1:
        raise InputError(f"{path}: {len(ids)} tokens, fewer than one sequence of {seq_len}")
    return ids[: n * seq_len].reshape(n, seq_len)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, batch: int = 4) -> float:
    total, count = 0.0, 0
    for i in range(0, len(ids), batch):
        x = ids[i : i + batch]
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        total += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
        )
        count += x[:, 1:].numel()
    return math.exp(total / count)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])
    if not 0 < args.params < 1:
        raise InputError(f"--params must be in (0, 1), got {args.params}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(args.hf) / "config.json").is_file():
        raise InputError(f"--hf {args.hf}: no config.json (a Hugging Face model folder)")
    tok = AutoTokenizer.from_pretrained(args.hf)
    calib = _chunks(tok, args.text, args.seq_len, args.calib)
    ev = _chunks(tok, args.eval, args.seq_len, None) if args.eval else None
    model = AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32).eval()
    if ev is not None:
        print(f"perplexity before: {perplexity(model, ev):.3f}", flush=True)
    t = time.perf_counter()
    record = api.edit(
        model, args.editor, data=calib, params=args.params, progress=True, **dict(args.option)
    )
    info = record.info
    print(
        f"pruned {info['block_params_removed']:,} parameters "
        f"({info['params_before']:,} -> {info['params_after']:,}) in "
        f"{time.perf_counter() - t:.1f} s on {calib.numel()} tokens",
        flush=True,
    )
    if ev is not None:
        print(f"perplexity after: {perplexity(model, ev):.3f}", flush=True)
    if args.save:
        api.save(model, args.save, record)
        print(f"saved to {args.save} (reload with pluginedit.load)")
    if args.save_pretrained:
        if not info["config_describes_model"]:
            raise InputError("the blocks differ in shape: --save-pretrained needs a uniform plan")
        model.save_pretrained(args.save_pretrained)
        tok.save_pretrained(args.save_pretrained)
        print(f"saved to {args.save_pretrained} (reload with from_pretrained)")
    return 0


def run(argv: list[str]) -> int:
    """``main`` with the CLI's error handling (what ``pluginedit.cli.main`` calls)."""
    try:
        return main(argv)
    except PluginEditError as e:
        print(f"pluginedit: error: {e}", file=sys.stderr)
        return 2
