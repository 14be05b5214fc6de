"""Building a model from a description (factory + arguments, or a transformers class + config)
and reading weight files without unpickling arbitrary objects."""

from __future__ import annotations

import importlib
import os
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..core.errors import InputError
from .hf import source_of_class
from .trust import check_factory, check_spec, transformers_class, transformers_config

SOURCE_ATTR = "_pluginedit_source"  # how the dense architecture was built
STEPS_ATTR = "_pluginedit_steps"  # structural edits applied since then
HISTORY_ATTR = "_pluginedit_history"  # summaries of the edits applied (saved with it)
UID_ATTR = "_pluginedit_uid"  # binds EditRecords to the model they were made on


def source_of(model: nn.Module) -> dict | None:
    return model.__dict__.get(SOURCE_ATTR)


def steps_of(model: nn.Module) -> list[dict]:
    """The structural edits applied since the model's source was built."""
    return list(model.__dict__.get(STEPS_ATTR, []))


def set_source(model: nn.Module, source: dict, steps: list | None = None) -> nn.Module:
    """Remember how ``model`` was built (saved with it; plain attributes, not state)."""
    model.__dict__[SOURCE_ATTR] = source
    model.__dict__[STEPS_ATTR] = list(steps or [])
    return model


def remember_source(model: nn.Module) -> None:
    """Before an edit: a model without a source that has not been edited yet, of a transformers
    class, remembers its dense architecture from its config (editors may change the config, so
    it is taken now), and ``save`` needs no ``source=``."""
    if source_of(model) is None and not steps_of(model):
        source = source_of_class(model)
        if source is not None:
            model.__dict__[SOURCE_ATTR] = source


def add_steps(model: nn.Module, steps: list[dict]) -> None:
    """Append structural edits to those the model carries (saved with it)."""
    if steps:
        model.__dict__[STEPS_ATTR] = list(model.__dict__.get(STEPS_ATTR, [])) + list(steps)


def add_edit(model: nn.Module, record) -> None:
    """Record an applied edit on the model: its structural steps, its summary in the history,
    and the record bound to this model (``save`` refuses records of other models)."""
    add_steps(model, record.steps)
    uid = model.__dict__.setdefault(UID_ATTR, uuid.uuid4().hex)
    record.model_uid = uid
    set_history(model, history_of(model) + [record.summary()])


def is_bound(model: nn.Module, record) -> bool:
    uid = model.__dict__.get(UID_ATTR)
    return uid is not None and getattr(record, "model_uid", None) == uid


def history_of(model: nn.Module) -> list[dict]:
    return list(model.__dict__.get(HISTORY_ATTR, []))


def set_history(model: nn.Module, history: list[dict]) -> None:
    model.__dict__[HISTORY_ATTR] = list(history)


def import_factory(spec: str):
    """The callable named by ``package.module:attribute`` (imports the module: trusted code
    only)."""
    module_name, attr = check_spec(spec).split(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"cannot import {module_name!r} for model factory {spec!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"model factory {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"model factory {spec!r} is not callable")
    return obj


def _transformers_model(source: dict) -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cls = transformers_class(source.get("class"))
    config = transformers_config(source.get("config") or {})
    try:
        return cls(cls.config_class.from_dict(config))
    except Exception as e:
        raise InputError(
            f"transformers class {cls.__name__} cannot be built from this config: "
            f"{type(e).__name__}: {str(e)[:200]}"
        ) from e


def build(source: dict, trusted: frozenset[str] = frozenset()) -> nn.Module:
    """The dense model a source description names. A factory is called only if it is on the
    allow-list of ``trust`` or in ``trusted``; nothing is imported before that check."""
    kind = source.get("kind") if isinstance(source, dict) else None
    if kind == "factory":
        args = source.get("args") or {}
        if not isinstance(args, dict):
            raise InputError(f"model arguments must be a JSON object, got {str(args)[:80]!r}")
        check_factory(source.get("factory"), args, trusted)
        try:
            model = import_factory(source.get("factory"))(**args)
        except InputError:
            raise
        except Exception as e:
            raise InputError(
                f"model factory {source.get('factory')!r} failed with {str(args)[:200]}: "
                f"{type(e).__name__}: {str(e)[:200]}"
            ) from e
    elif kind == "transformers":
        model = _transformers_model(source)
    else:
        raise InputError(
            f"unknown model source {str(source)[:200]}: need kind 'factory' or 'transformers'"
        )
    if not isinstance(model, nn.Module):
        raise InputError(
            f"model source {str(source)[:200]} built a {type(model).__name__}, not an nn.Module"
        )
    return set_source(model, source)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pt``/``.pth`` state dict read with
    ``weights_only=True`` (tensors and containers only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"weights file {path} " + ("is a directory" if path.is_dir() else "does not exist")
        )
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable safetensors file ({e})") from e
    if path.suffix not in (".pt", ".pth", ".bin"):
        raise InputError(f"{path}: weights must be .safetensors, .pt or .pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            f"{path}: not a state dict loadable with weights_only=True "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from e
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: expected a state dict (name -> tensor)")
    return state


def _dtype_kind(t: torch.Tensor) -> str:
    return (
        "bool"
        if t.dtype == torch.bool
        else "complex"
        if t.is_complex()
        else "floating-point"
        if t.is_floating_point()
        else "integer"
    )


def load_state(model: nn.Module, state: dict, where: str) -> None:
    """``load_state_dict(strict=True)`` with an error naming the file and the mismatch. A tensor
    of another kind than the model's (integer or bool weights for floating ones: quantised or
    damaged) is refused, not cast; another float precision is cast to the model's, as torch does."""
    own = model.state_dict()
    wrong = [
        f"{k!r} ({v.dtype}, the model's {own[k].dtype})"
        for k, v in state.items()
        if k in own and torch.is_tensor(v) and _dtype_kind(v) != _dtype_kind(own[k])
    ]
    if wrong:
        raise InputError(
            f"{where}: tensor(s) of the wrong kind for the model: {', '.join(wrong[:5])}"
            f"{f' and {len(wrong) - 5} more' if len(wrong) > 5 else ''}; quantised or "
            "integer weights are not cast silently: dequantise them first"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:4]
        raise InputError(
            f"{where}: the weights do not fit the model ({'; '.join(lines)[:600]})"
        ) from e


def load_model(
    factory: str | None = None, args: dict | None = None, weights=None, hf: str | Path | None = None
) -> nn.Module:
    """A model from a factory (``package.module:callable`` with ``args``) or a local transformers
    directory (``hf``), with optional ``weights``; in eval mode, its source remembered for
    ``save``."""
    if (factory is None) == (hf is None):
        raise InputError("give exactly one of a model factory or a transformers directory")
    if hf is not None:
        model = _from_pretrained(Path(hf))
    else:
        # the caller names the factory: that is trusting it
        model = build(
            {"kind": "factory", "factory": factory, "args": {} if args is None else args},
            trusted=frozenset([factory]) if isinstance(factory, str) else frozenset(),
        )
    if weights is not None:
        load_state(model, load_weights(weights), str(weights))
    return model.eval()


def _from_pretrained(path: Path) -> nn.Module:
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a transformers model directory (no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    try:  # invalid JSON (OSError), an unknown or missing model_type (ValueError)
        config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise InputError(
            f"{path}: its config.json cannot be read by transformers "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]})"
        ) from e
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    cls = cls or transformers.AutoModel._model_mapping[type(config)]
    model = cls.from_pretrained(path)
    return set_source(
        model,
        {"kind": "transformers", "class": type(model).__name__, "config": model.config.to_dict()},
    )
