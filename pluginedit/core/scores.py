"""Scores: one importance vector per component group (higher = more important)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .components import groups, size_of
from .errors import InputError
from .files import written_whole


@dataclass
class Scores:
    values: dict[str, torch.Tensor]          # module path -> [n_components] float tensor
    scorer: str = ""
    options: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # samples seen, statistic backend, ...

    def __post_init__(self):
        for path, v in self.values.items():
            if v.ndim != 1:
                raise InputError(f"scores of {path!r} must be 1-D, got shape {tuple(v.shape)}")
            if not torch.isfinite(v).all():
                raise InputError(f"scores of {path!r} from scorer {self.scorer!r} contain NaN or Inf")
        self.values = {k: v.detach().float().cpu() for k, v in self.values.items()}

    def __getitem__(self, path: str) -> torch.Tensor:
        return self.values[path]

    def __contains__(self, path: str) -> bool:
        return path in self.values

    def __iter__(self):
        return iter(self.values)

    def check_fits(self, model) -> None:
        """Every scored layer exists in ``model`` with as many components as it has scores:
        scores of another model, or of this one before an edit, are refused, never truncated."""
        layers = groups(model)
        missing = [p for p in self.values if p not in layers]
        if missing:
            raise InputError(f"scores from {self.scorer!r} name layers the model does not have: "
                             f"{missing[:5]} (scores of another model?)")
        bad = {p: (len(v), size_of(layers[p])) for p, v in self.values.items() if len(v) != size_of(layers[p])}
        if bad:
            p, (n, m) = next(iter(bad.items()))
            raise InputError(f"scores of {p!r} have {n} entries but the layer has {m} components "
                             f"({len(bad)} layer(s) differ: scores of another model, or of an earlier state?)")

    def lowest(self, path: str, n: int) -> torch.Tensor:
        """Indices of the ``n`` least important components of a group (stable order)."""
        return torch.argsort(self.values[path], stable=True)[:n]

    @staticmethod
    def _files(stem: str | Path) -> tuple[Path, Path]:
        """STEM.safetensors and STEM.json; a stem with dots ("run.v1") keeps them (no
        with_suffix, which would turn run.v1 and run.v2 into the same run.*)."""
        stem = str(stem)
        for ext in (".safetensors", ".json"):
            stem = stem[: -len(ext)] if stem.endswith(ext) else stem
        return Path(stem + ".safetensors"), Path(stem + ".json")

    def save(self, stem: str | Path) -> None:
        """STEM.safetensors and STEM.json, each written whole or not at all (an interrupted
        save leaves no partial or temporary file)."""
        tensors, head = self._files(stem)
        meta = json.dumps({"scorer": self.scorer, "options": self.options, "meta": self.meta},
                          indent=2, default=str)
        with written_whole(tensors) as t, written_whole(head) as h:
            save_file({k: v.contiguous() for k, v in self.values.items()}, str(t))
            h.write_text(meta)

    @classmethod
    def load(cls, stem: str | Path) -> "Scores":
        """The Scores saved under ``stem``, or an ``InputError`` naming the file and the problem."""
        tensors, head = cls._files(stem)
        for f in (tensors, head):
            if not f.is_file():
                raise InputError(f"scores file {f} does not exist")
        try:
            values = load_file(str(tensors))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{tensors}: not a readable safetensors file ({e})") from e
        try:
            fields = json.loads(head.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{head}: not valid JSON ({e})") from e
        kinds = {"scorer": str, "options": dict, "meta": dict}
        if not isinstance(fields, dict) or set(fields) - set(kinds) or \
                any(not isinstance(fields[k], kind) for k, kind in kinds.items() if k in fields):
            raise InputError(f"{head}: expected a JSON object with a string 'scorer' and objects "
                             f"'options' and 'meta', got {str(fields)[:200]}")
        try:
            return cls(values, **fields)
        except InputError as e:
            raise InputError(f"{tensors}: {e}") from e
