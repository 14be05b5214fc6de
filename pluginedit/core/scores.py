"""Scores: one importance vector per component group (higher = more important)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import InputError


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

    def lowest(self, path: str, n: int) -> torch.Tensor:
        """Indices of the ``n`` least important components of a group (stable order)."""
        return torch.argsort(self.values[path], stable=True)[:n]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        save_file({k: v.contiguous() for k, v in self.values.items()}, str(path.with_suffix(".safetensors")))
        head = {"scorer": self.scorer, "options": self.options, "meta": self.meta}
        path.with_suffix(".json").write_text(json.dumps(head, indent=2, default=str))

    @classmethod
    def load(cls, path: str | Path) -> "Scores":
        path = Path(path)
        head = json.loads(path.with_suffix(".json").read_text())
        return cls(load_file(str(path.with_suffix(".safetensors"))), **head)
