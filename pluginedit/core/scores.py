"""Scores: one importance vector per component group (higher = more important)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .components import groups, size_of
from .errors import InputError
from .files import loads_json, written_whole


class Scores(Mapping):
    """Importance scores, one 1-D float tensor per scored layer (higher = more important).

    A read-only mapping ``{layer path: tensor of shape [components]}``: ``scores[path]``,
    ``len(scores)``, ``path in scores``, iteration over the paths, ``keys()``, ``values()``,
    ``items()``, ``get()`` and ``dict(scores)`` work as on a dict; assignment and deletion are
    refused (``TypeError``). The tensors are stored detached, as float32 on the CPU.

    Args:
        values: ``{layer path: 1-D tensor}`` (positional, or ``values=``); each must be 1-D
            and finite, else ``InputError``.
        scorer: the name of the scorer that produced them (recorded by editors that use them).
        options: the scorer's options.
        meta: anything else worth keeping (samples seen, statistic backend, targets, ...).

    Example:
        >>> import torch, pluginedit as pe
        >>> s = pe.Scores({"features.0": torch.tensor([0.3, 0.1, 0.2])}, scorer="mine")
        >>> len(s), list(s), s.lowest("features.0", 1).tolist()
        (1, ['features.0'], [1])
    """

    __slots__ = ("_values", "scorer", "options", "meta")

    def __init__(
        self,
        values: Mapping[str, torch.Tensor] | None = None,
        scorer: str = "",
        options: dict | None = None,
        meta: dict | None = None,
    ):
        values = dict(values or {})
        for path, v in values.items():
            if not torch.is_tensor(v):
                raise InputError(f"scores of {path!r} must be a tensor, got {type(v).__name__}")
            if v.ndim != 1:
                raise InputError(f"scores of {path!r} must be 1-D, got shape {tuple(v.shape)}")
            if not torch.isfinite(v).all():
                raise InputError(f"scores of {path!r} from scorer {scorer!r} contain NaN or Inf")
        self._values: dict[str, torch.Tensor] = {
            k: v.detach().float().cpu() for k, v in values.items()
        }
        self.scorer = scorer
        self.options = dict(options or {})
        self.meta = dict(meta or {})  # samples seen, statistic backend, ...

    def __getitem__(self, path: str) -> torch.Tensor:
        return self._values[path]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __contains__(self, path) -> bool:
        return path in self._values

    def __eq__(self, other) -> bool:
        if not isinstance(other, Scores):
            return NotImplemented
        return (
            (self.scorer, self.options, self.meta) == (other.scorer, other.options, other.meta)
            and list(self._values) == list(other._values)
            and all(torch.equal(v, other._values[k]) for k, v in self._values.items())
        )

    # Unhashable (equality is by value). typeshed declares object.__hash__ a method, and a method
    # overridden by None is what the type system cannot express.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k!r}: [{len(v)}]" for k, v in list(self._values.items())[:6])
        more = ", ..." if len(self._values) > 6 else ""
        return f"Scores(scorer={self.scorer!r}, {{{sizes}{more}}})"

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def check_fits(self, model) -> None:
        """Every scored layer exists in ``model`` with as many components as it has scores:
        scores of another model, or of this one before an edit, are refused, never truncated."""
        layers = groups(model)
        missing = [p for p in self._values if p not in layers]
        if missing:
            raise InputError(
                f"scores from {self.scorer!r} name layers the model does not have: "
                f"{missing[:5]} (scores of another model?)"
            )
        bad = {
            p: (len(v), size_of(layers[p]))
            for p, v in self._values.items()
            if len(v) != size_of(layers[p])
        }
        if bad:
            p, (n, m) = next(iter(bad.items()))
            raise InputError(
                f"scores of {p!r} have {n} entries but the layer has {m} components "
                f"({len(bad)} layer(s) differ: scores of another model, or of an earlier state?)"
            )

    def lowest(self, path: str, n: int) -> torch.Tensor:
        """Indices of the ``n`` least important components of a group (stable order)."""
        return torch.argsort(self._values[path], stable=True)[:n]

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
        meta = json.dumps(
            {"scorer": self.scorer, "options": self.options, "meta": self.meta},
            indent=2,
            default=str,
        )
        with written_whole(tensors) as t, written_whole(head) as h:
            save_file({k: v.contiguous() for k, v in self._values.items()}, str(t))
            h.write_text(meta)

    @classmethod
    def load(cls, stem: str | Path) -> Scores:
        """The Scores saved under ``stem``, or an ``InputError`` naming the file and the problem."""
        tensors, head = cls._files(stem)
        for f in (tensors, head):
            if not f.is_file():
                raise InputError(f"scores file {f} does not exist")
        try:
            values = load_file(str(tensors))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{tensors}: not a readable safetensors file ({e})") from e
        fields = loads_json(head.read_bytes(), head)
        kinds = {"scorer": str, "options": dict, "meta": dict}
        if (
            not isinstance(fields, dict)
            or set(fields) - set(kinds)
            or any(not isinstance(fields[k], kind) for k, kind in kinds.items() if k in fields)
        ):
            raise InputError(
                f"{head}: expected a JSON object with a string 'scorer' and objects "
                f"'options' and 'meta', got {str(fields)[:200]}"
            )
        try:
            return cls(values, **fields)
        except InputError as e:
            raise InputError(f"{tensors}: {e}") from e
