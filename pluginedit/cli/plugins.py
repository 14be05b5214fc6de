"""``pluginedit plugins``: the scorer and editor plugins installed, and one plugin's options."""

from __future__ import annotations

import inspect

from ..core import registry
from ..core.errors import InputError
from ..core.plugin import describe


def cmd_plugins(args) -> int:
    if args.describe:
        return _describe(args.describe)
    rows = [
        (p.name, p.kind, p.dist, p.version, "ok" if p.error is None else f"BROKEN: {p.error}")
        for p in registry.listing()
    ]
    widths = [
        max(len(r[i]) for r in rows + [("name", "kind", "distribution", "version", "")])
        for i in range(4)
    ]
    print(
        "  ".join(h.ljust(w) for h, w in zip(("name", "kind", "distribution", "version"), widths))
        + "  status"
    )
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])
    return 0


def _describe(name: str) -> int:
    table = {p.name: p for p in registry.listing()}
    if name not in table:
        raise InputError(f"unknown plugin {name!r}; known: {', '.join(sorted(table))}")
    info = table[name]
    if info.obj is None:  # listed as broken: say why, as `pluginedit plugins` does
        raise InputError(f"plugin {name!r} ({info.kind}, {info.display}) is broken: {info.error}")
    cls = info.obj
    flags = ""
    if info.kind == "editor":
        flags = (
            f" kind={cls.kind} needs_data={cls.needs_data} needs_labels={cls.needs_labels} "
            f"uses_scores={cls.uses_scores}"
        )
    print(f"{name} ({info.kind}, {info.display}){flags}")
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():  # the whole docstring
        print(f"  {line}".rstrip())
    rows = describe(cls)
    print("  options:" if rows else "  options: none")
    for opt, default, help_ in rows:
        print(f"    {opt} = {default}  {help_}")
    return 0


def add_plugins_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list scorer and editor plugins")
    p.add_argument(
        "--describe", metavar="NAME", default=None, help="print one plugin's options and flags"
    )
    p.set_defaults(fn=cmd_plugins)
