"""Edit records (what changed, reversible where it can be) and the atomic-edit guard."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class EditRecord:
    editor: str
    options: dict = field(default_factory=dict)
    semantics: str = ""                                            # e.g. "removed", "zeroed weight+bias+bn"
    changes: dict[str, list[int]] = field(default_factory=dict)   # module path -> component indices
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # tensor name -> original values
    info: dict = field(default_factory=dict)

    @property
    def reversible(self) -> bool:
        return bool(self.saved)

    def undo(self, model: nn.Module) -> None:
        """Restore every saved tensor (masking edits); physical removals cannot be undone."""
        if not self.reversible:
            raise RuntimeError(f"the {self.editor!r} edit ({self.semantics}) is not reversible")
        state = dict(model.named_parameters()) | dict(model.named_buffers())
        with torch.no_grad():
            for name, value in self.saved.items():
                state[name].copy_(value)

    def num_changed(self) -> int:
        return sum(len(v) for v in self.changes.values())

    def summary(self) -> dict:
        return {"editor": self.editor, "semantics": self.semantics, "options": self.options,
                "changed": {k: len(v) for k, v in self.changes.items()}, **self.info}


@contextlib.contextmanager
def atomic(model: nn.Module):
    """Run an edit; if it raises, put the model back exactly as it was (structure, parameters,
    buffers) and re-raise."""
    snapshot = copy.deepcopy(model)
    try:
        yield model
    except BaseException:
        model.__dict__.clear()
        model.__dict__.update(snapshot.__dict__)
        raise
