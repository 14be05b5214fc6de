"""Plugin registry: entry-point groups ``pluginedit.scorers`` and ``pluginedit.editors``.

Built-ins come through the same door (pluginedit's own entry points). A plugin that fails to
import is listed as broken with its error and breaks nothing else; duplicate names and
incompatible api_versions are errors that name the distributions.
``PLUGINEDIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads pluginedit's own plugins only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

from .errors import InputError, PluginError
from .plugin import API_VERSION

GROUPS = {"scorer": "pluginedit.scorers", "editor": "pluginedit.editors"}
AUTOLOAD_ENV = "PLUGINEDIT_DISABLE_PLUGIN_AUTOLOAD"
SELF = "pluginedit"


@dataclass
class PluginInfo:
    name: str
    kind: str
    dist: str
    version: str
    obj: type | None = None
    error: str | None = None

    @property
    def display(self) -> str:
        return f"{self.dist}[{self.name}] {self.version}"


def _load(ep, kind: str) -> PluginInfo:
    dist = ep.dist.name if ep.dist else "?"
    version = ep.dist.version if ep.dist else "?"
    info = PluginInfo(ep.name, kind, dist, version)
    try:
        obj = ep.load()
    except Exception as e:  # a broken plugin must not break the others
        info.error = f"import failed: {type(e).__name__}: {e}"
        return info
    api = getattr(obj, "api_version", None)
    if api != API_VERSION:
        info.error = f"incompatible api_version {api!r} (pluginedit speaks {API_VERSION})"
    else:
        info.obj = obj
    return info


@cache
def plugins(kind: str) -> dict[str, PluginInfo]:
    """name -> PluginInfo for one kind ("scorer" or "editor"); cached, see ``refresh``."""
    only_builtin = os.environ.get(AUTOLOAD_ENV, "") not in ("", "0")
    found: dict[str, PluginInfo] = {}
    for ep in entry_points(group=GROUPS[kind]):
        dist = ep.dist.name if ep.dist else "?"
        if only_builtin and dist != SELF:
            continue
        prev = found.get(ep.name)
        if prev is not None and prev.dist == dist:
            continue  # the same distribution seen twice (e.g. an editable install)
        info = _load(ep, kind)
        if prev is not None:  # the name becomes unusable: neither side silently wins
            prev.obj, prev.error = (
                None,
                (
                    f"duplicate {kind} name {ep.name!r}: registered by "
                    f"{prev.display} and by {info.display}"
                ),
            )
            continue
        found[ep.name] = info
    if not any(p.dist == SELF for p in found.values()):
        raise PluginError(
            "pluginedit's own plugins are not registered: install the package "
            "(pip install -e .) so its entry points exist"
        )
    return found


def refresh() -> None:
    """Forget cached entry points (after installing a plugin in-process)."""
    plugins.cache_clear()


def get(kind: str, name: str) -> type:
    table = plugins(kind)
    if name not in table:
        known = ", ".join(sorted(n for n, p in table.items() if p.obj is not None))
        raise InputError(f"unknown {kind} {name!r}; known: {known}")
    info = table[name]
    if info.obj is None:
        raise PluginError(f"{kind} {info.display} cannot be used: {info.error}")
    return info.obj


def get_scorer(name: str, **options):
    return get("scorer", name)(**options)


def get_editor(name: str, **options):
    return get("editor", name)(**options)


def listing() -> list[PluginInfo]:
    return [p for kind in GROUPS for p in sorted(plugins(kind).values(), key=lambda p: p.name)]
