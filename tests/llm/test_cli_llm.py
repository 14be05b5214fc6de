"""``pluginedit prune --hf DIR --text FILE``: a tiny Llama with a word-level tokenizer, pruned
from the command line (a progress line per block), saved both ways and reloaded."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import pluginedit as pe  # noqa: E402
from pluginedit.cli import llm as cli_llm  # noqa: E402
from pluginedit.core.errors import InputError  # noqa: E402

WORDS = [f"w{i}" for i in range(60)]


def _folder(tmp_path):
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path / "dense")
    fast.save_pretrained(tmp_path / "dense")
    g = torch.Generator().manual_seed(0)
    text = " ".join(WORDS[i] for i in torch.randint(0, 60, (2000,), generator=g).tolist())
    (tmp_path / "text.txt").write_text(text)
    return tmp_path


@pytest.mark.slow  # two model saves and loads besides the edit: past 20 s on a busy machine
def test_cli_prunes_saves_and_reloads(tmp_path, capsys):
    d = _folder(tmp_path)
    argv = [
        "prune",
        "--hf",
        str(d / "dense"),
        "--text",
        str(d / "text.txt"),
        "--eval",
        str(d / "text.txt"),
        "--params",
        "0.3",
        "--calib",
        "8",
        "--seq-len",
        "32",
        "--save",
        str(d / "pe"),
        "--save-pretrained",
        str(d / "hf"),
    ]
    assert cli_llm.wants(argv)
    assert cli_llm.main(argv) == 0
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert sum("FFN channels removed" in line for line in lines) == 2  # one line per block
    hf = AutoModelForCausalLM.from_pretrained(d / "hf").eval()
    back = pe.load(d / "pe")
    ids = torch.randint(1, 61, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = back(input_ids=ids).logits
        torch.testing.assert_close(hf(input_ids=ids).logits, ref)
    assert hf.config.intermediate_size < 64


def test_cli_refuses_a_missing_text_before_loading(tmp_path):
    d = _folder(tmp_path)
    with pytest.raises(InputError, match="no file"):
        cli_llm.main(["prune", "--hf", str(d / "dense"), "--text", str(d / "nope.txt")])
    assert not cli_llm.wants(["prune", "--hf", str(d / "dense")])
