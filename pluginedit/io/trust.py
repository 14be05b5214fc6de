"""Which constructors ``pluginedit.load`` may call: the trust model of a saved folder.

A manifest names how to rebuild the dense architecture. Naming a callable is naming code, so a
folder from elsewhere must never choose what runs: ``load`` calls only

- the built-in zoo (``pluginedit.contrib.zoo:build``),
- ``torch.nn`` layer classes (``torch.nn:Linear``),
- ``transformers`` model classes, built from their config alone (never remote code),
- torchvision model constructors and ``timm:create_model`` where those packages are installed,
  always without pretrained weights (nothing is downloaded),
- and factories the caller names (``pluginedit.load(dir, trusted=["mypkg.nets:make"])``).

Anything else is refused before a module is imported. The check reads only strings from the
manifest; the only modules it imports are the allow-listed packages themselves.
"""

from __future__ import annotations

import importlib.util
import re

from torch import nn

from ..core.errors import InputError

ZOO = "pluginedit.contrib.zoo:build"
SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
# Arguments that would download weights or read a file named by the manifest.
_FETCHING_ARGS = {
    "weights",
    "weights_backbone",
    "pretrained",
    "pretrained_backbone",
    "checkpoint_path",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "cache_dir",
    "model_dir",
}
# transformers picks the attention code from the config; a hub kernel name would fetch code.
_SAFE_ATTENTION = {None, "eager", "sdpa"}


def check_spec(spec, what: str = "model factory") -> str:
    if not isinstance(spec, str) or len(spec) > 200 or not SPEC.match(spec):
        raise InputError(f"{what} {str(spec)[:80]!r} must look like 'package.module:callable'")
    return spec


def trusted_specs(trusted) -> frozenset[str]:
    """The caller's extra trusted factories, checked: a list of 'package.module:callable'."""
    if trusted is None:
        return frozenset()
    if isinstance(trusted, str) or not all(isinstance(t, str) for t in trusted):
        raise InputError(
            f"trusted must be a list of 'package.module:callable' strings, got {trusted!r}"
        )
    return frozenset(check_spec(t, "trusted factory") for t in trusted)


def _refuse(spec: str) -> InputError:
    return InputError(
        f"model factory {spec!r} is not trusted: a saved model is rebuilt only by the built-in "
        f"zoo, torch.nn layers, transformers classes and torchvision/timm constructors; if you "
        f"trust this folder's code, pass pluginedit.load(dir, trusted=[{spec!r}]) "
        f"(CLI: --trust {spec})"
    )


def _torch_nn(attr: str) -> bool:
    obj = getattr(nn, attr, None)
    return (
        isinstance(obj, type)
        and issubclass(obj, nn.Module)
        and obj.__module__.startswith("torch.nn")
    )


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _torchvision(attr: str) -> bool:
    if not _installed("torchvision"):
        return False
    try:
        import torchvision.models as tvm

        return attr in tvm.list_models(module=tvm)
    except Exception:  # torchvision present but broken (e.g. a CUDA build): not usable
        return False


def _no_fetching(spec: str, args: dict) -> None:
    bad = sorted(k for k in _FETCHING_ARGS & set(args) if args[k] not in (None, False))
    if bad:
        raise InputError(
            f"model factory {spec!r}: arguments {bad} would download or read files; "
            "a saved model carries its own weights"
        )


def check_factory(spec, args: dict, trusted: frozenset[str]) -> None:
    """Raise unless ``spec`` (with ``args``) is allowed; imports nothing outside the allow-list."""
    spec = check_spec(spec)
    if spec in trusted:
        return
    module, attr = spec.split(":")
    if spec == ZOO or (module == "torch.nn" and _torch_nn(attr)):
        return
    if module == "torchvision.models" and _torchvision(attr):
        return _no_fetching(spec, args)
    if spec == "timm:create_model" and _installed("timm"):
        return _no_fetching(spec, args)
    raise _refuse(spec)


def transformers_class(name):
    """The ``transformers`` model class called ``name``, or an InputError."""
    import transformers

    cls = (
        getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    )
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise InputError(f"{str(name)[:80]!r} is not a transformers model class")
    return cls


def transformers_config(config) -> dict:
    """A config dict that builds the architecture and nothing else: no remote-code map, no
    attention implementation that would fetch a kernel."""
    if not isinstance(config, dict):
        raise InputError(
            f"a transformers source needs a config object, got {type(config).__name__}"
        )
    config = {k: v for k, v in config.items() if k != "auto_map"}
    for key in ("attn_implementation", "_attn_implementation"):
        if config.get(key) not in _SAFE_ATTENTION:
            raise InputError(
                f"config {key}={str(config[key])[:80]!r} is not allowed when loading a "
                f"saved model (use one of {sorted(a for a in _SAFE_ATTENTION if a)})"
            )
    return config
