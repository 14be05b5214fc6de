"""Edit records (what changed, reversible where it can be) and the atomic-edit guard."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import EditError


@dataclass
class EditRecord:
    editor: str
    options: dict = field(default_factory=dict)
    semantics: str = ""  # e.g. "removed", "zeroed weight+bias+bn"
    changes: dict[str, list[int]] = field(default_factory=dict)  # module path -> component indices
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # tensor name -> original values
    info: dict = field(default_factory=dict)
    scores: str | None = None  # scorer whose Scores decided, if any
    steps: list[dict] = field(default_factory=list)  # structural edits, replayable (io)
    model_uid: str | None = field(default=None, repr=False, compare=False)  # set by pluginedit.edit

    @property
    def reversible(self) -> bool:
        return bool(self.saved)

    def absorb(self, trial: EditRecord) -> None:
        """Keep a trial edit made on top of this one: its changes join ours, and for tensors
        saved by both our copy (the earlier one, the original) stays."""
        for key, value in trial.saved.items():
            self.saved.setdefault(key, value)
        for path, idx in trial.changes.items():
            self.changes.setdefault(path, []).extend(idx)

    def undo(self, model: nn.Module) -> None:
        """Restore every saved tensor (masking edits); physical removals cannot be undone.
        Checked whole before anything is written, so a failed undo changes nothing; tied
        parameters are found under every name they have."""
        if not self.reversible:
            raise EditError(f"the {self.editor!r} edit ({self.semantics}) is not reversible")
        state = dict(model.named_parameters(remove_duplicate=False)) | dict(
            model.named_buffers(remove_duplicate=False)
        )
        missing = [k for k in self.saved if k not in state]
        wrong = [k for k in self.saved if k in state and state[k].shape != self.saved[k].shape]
        if missing or wrong:
            raise EditError(
                f"cannot undo the {self.editor!r} edit on this model: "
                f"missing {missing[:5]}, shape changed {wrong[:5]}"
            )
        with torch.no_grad():
            for name, value in self.saved.items():
                state[name].copy_(value)

    def num_changed(self) -> int:
        return sum(len(v) for v in self.changes.values())

    def summary(self) -> dict:
        return {
            "editor": self.editor,
            "semantics": self.semantics,
            "options": self.options,
            "scores": self.scores,
            "structural_steps": len(self.steps),
            "changed": {k: len(v) for k, v in self.changes.items()},
            **self.info,
        }


class Snapshot:
    """The state of every module of a model, taken without copying the model: each module's
    attribute dict (shallow) and a clone of every parameter and buffer. ``restore`` puts it back
    in place, so every module, parameter and buffer object keeps its identity (references the
    user holds stay valid) and no pickling or deep copy is needed (models holding locks,
    parametrised layers)."""

    def __init__(self, model: nn.Module):
        self.modules = list(model.modules())
        self.dicts = [self._shallow(m.__dict__) for m in self.modules]
        tensors = {}
        for m in self.modules:
            for t in list(m._parameters.values()) + list(m._buffers.values()):
                if t is not None and id(t) not in tensors:
                    tensors[id(t)] = (t, t.detach().clone())
        self.tensors = list(tensors.values())

    @staticmethod
    def _shallow(d: dict) -> dict:
        return {k: (v.copy() if isinstance(v, dict) else v) for k, v in d.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for m, d in zip(self.modules, self.dicts):
            m.__dict__.clear()
            m.__dict__.update(self._shallow(d))
        for t, saved in self.tensors:
            _put_back(t, saved)


@torch.no_grad()
def _put_back(t: torch.Tensor, saved: torch.Tensor) -> None:
    """Give ``t`` (the same object) the values of ``saved`` again, whatever happened to its
    shape."""
    if t.shape == saved.shape and t.dtype == saved.dtype:
        t.copy_(saved)
    else:
        t.data = saved.clone()


@contextlib.contextmanager
def buffers_kept(model: nn.Module):
    """Run, then put every buffer back: the same tensor object under each name, with its
    values. Reading a model must not change it, even one whose forward counts calls in a buffer
    (``self.calls += 1``, or ``self.calls = self.calls + 1``). Buffers only, so it is cheap."""
    saved = [
        (m, name, t, t.detach().clone())
        for m in model.modules()
        for name, t in m._buffers.items()
        if t is not None
    ]
    try:
        yield model
    finally:
        for m, name, t, value in saved:
            _put_back(t, value)
            m._buffers[name] = t


@contextlib.contextmanager
def atomic(model: nn.Module, snapshot=None):
    """Run an edit; if it raises, put the model back exactly as it was (structure, parameters,
    buffers, training mode), in place, and re-raise. ``snapshot``: the class that keeps the
    state (default ``Snapshot``; ``spill.SpilledSnapshot`` keeps it on disk)."""
    snapshot = (snapshot or Snapshot)(model)
    try:
        yield model
    except BaseException:
        snapshot.restore()
        raise
    finally:
        getattr(snapshot, "close", lambda: None)()
