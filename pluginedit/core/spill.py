"""A snapshot for atomic edits whose copy of the model lives on disk, not in memory.

``record.Snapshot`` clones every parameter and buffer and holds the originals: memory of twice
the model while an edit runs, and (an editor that replaces its layers' weights, like a pruner's
surgery) the replaced tensors are kept alive until the edit ends. For an editor that walks a
large model block by block (decoder LLMs) that is what grows with depth. ``SpilledSnapshot``
writes the values to a temporary file once and holds the tensors only weakly, so a tensor the
edit drops is freed as it goes; ``restore`` reads the file back: a tensor still alive gets its
values in place (same object, references the user holds stay valid), one that was freed (no
one held it) is rebuilt. The file is deleted by ``close``. It goes to ``tempfile``'s folder
(``TMPDIR``): on a tmpfs the copy is in memory again."""

from __future__ import annotations

import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .record import _put_back


@dataclass(frozen=True)
class _Slot:
    """Stands for the tensor ``index`` in a module's saved ``_parameters`` / ``_buffers``."""

    index: int


class SpilledSnapshot:
    """The state of every module, as ``record.Snapshot``, with the tensors' values on disk."""

    def __init__(self, model: nn.Module):
        self.modules = list(model.modules())
        slots: dict[int, int] = {}
        self.refs: list[weakref.ref] = []
        self.kinds: list[tuple] = []
        values: dict[str, torch.Tensor] = {}
        for m in self.modules:
            for t in list(m._parameters.values()) + list(m._buffers.values()):
                if t is not None and id(t) not in slots:
                    slots[id(t)] = len(self.refs)
                    self.refs.append(weakref.ref(t))
                    self.kinds.append((isinstance(t, nn.Parameter), t.requires_grad, t.device))
                    values[str(len(values))] = t.detach()
        self.dicts = [self._slotted(m.__dict__, slots) for m in self.modules]
        self._dir = tempfile.TemporaryDirectory(prefix="pluginedit-snapshot-")
        self.path = Path(self._dir.name) / "tensors.pt"
        torch.save(values, self.path)

    @staticmethod
    def _slotted(d: dict, slots: dict[int, int]) -> dict:
        out = {k: (v.copy() if isinstance(v, dict) else v) for k, v in d.items()}
        for key in ("_parameters", "_buffers"):
            if key in out:
                out[key] = {
                    k: (None if t is None else _Slot(slots[id(t)])) for k, t in out[key].items()
                }
        return out

    @torch.no_grad()
    def _tensors(self) -> list[torch.Tensor]:
        """Every saved tensor with its values back: the same object where it is alive."""
        saved = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        out = []
        for i, (ref, (param, grad, device)) in enumerate(zip(self.refs, self.kinds)):
            value, t = saved[str(i)].to(device), ref()
            if t is not None:
                _put_back(t, value)
            elif param:
                t = nn.Parameter(value.clone(), requires_grad=grad)
            else:
                t = value.clone()
            out.append(t)
        return out

    @torch.no_grad()
    def restore(self) -> None:
        tensors = self._tensors()
        for m, d in zip(self.modules, self.dicts):
            m.__dict__.clear()
            m.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in d.items()})
            for key in ("_parameters", "_buffers"):
                if key in d:
                    m.__dict__[key] = {
                        k: (None if s is None else tensors[s.index]) for k, s in d[key].items()
                    }

    def close(self) -> None:
        self._dir.cleanup()
