"""The layering of the package, read from its source: a layer imports only the layers below it
(no exemption), no module takes part in an import cycle (imports inside functions included),
nothing imports the façade, torch-pruning is spoken only in ``pluginedit.graph``, and files and
functions stay short enough to read."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pluginedit"
# Lowest first; a module may import its own layer and the ones before it.
LAYERS = [
    "core",
    "linalg",
    "ops",
    "stats",
    "capture",
    "evaluate",
    "graph",
    "scorers",
    "editors",
    "io",
    "report",
    "api",
    "demo",
    "cli",
]
CONTRIB_USERS = {"cli", "demo", "contrib"}
GRAPH = "pluginedit.graph"  # the dependency layer: the only speaker of torch-pruning


def _modules() -> dict[str, Path]:
    """Every module of the package by name, the kernels shipped as pluginedit.triton_kernels (a
    link inside the package) included."""
    out = {}
    files = [
        Path(d) / f
        for d, _, names in os.walk(PKG, followlinks=True)
        for f in names
        if f.endswith(".py")
    ]
    for f in files:
        rel = f.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["pluginedit", *parts])] = f
    return out


def _statements(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module, names taken from it) of every import statement of ``name``, at any depth
    (inside functions too), relative imports resolved; ``import a.b`` takes no names."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((base, [a.name for a in node.names]))
    return found


def _imports(name: str, path: Path) -> list[str]:
    """Absolute names of every module ``name`` imports (relative imports resolved)."""
    found = []
    for base, names in _statements(name, path):
        found.append(base)
        found += [f"{base}.{n}" for n in names]  # "from . import x" imports x
    return found


def _ancestors(module: str) -> list[str]:
    """The packages above ``module`` but the root (which is always initialising first)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _loads(name: str, path: Path) -> set[str]:
    """The package modules importing ``name`` runs: each imported module (``from m import x``
    loads m.x when that is a module, else m), with the packages above it that ``name`` is not
    already inside."""
    found = set()
    for base, names in _statements(name, path):
        targets = [f"{base}.{n}" if f"{base}.{n}" in MODULES else base for n in names] or [base]
        for t in targets:
            if t in MODULES:
                found |= {t, *(a for a in _ancestors(t) if a not in _ancestors(name) and a != name)}
    found.discard(name)
    return found


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` (as a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pluginedit" or len(parts) < 2:
        return None
    return "ops" if parts[1] == "triton_kernels" else parts[1]  # the kernels behind the ops


MODULES = _modules()


def test_layers_import_only_downwards():
    bad = []
    for name, path in MODULES.items():
        mine = _layer(name)
        if mine is None:  # the package's __init__: the public verbs and types
            continue
        for imp in _imports(name, path):
            theirs = _layer(imp)
            if (
                theirs is None
                or theirs == mine
                or imp not in MODULES
                and imp.rsplit(".", 1)[0] not in MODULES
            ):
                continue
            if theirs == "contrib":
                if mine not in CONTRIB_USERS:
                    bad.append(f"{name} imports {imp} (contrib is for cli and demo only)")
                continue
            if mine == "contrib":
                if theirs in ("api", "cli"):
                    bad.append(f"{name} imports {imp}")
                continue
            if theirs in LAYERS and mine in LAYERS and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{name} ({mine}) imports {imp} ({theirs})")
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_facade():
    bad = [
        name
        for name, path in MODULES.items()
        if name not in ("pluginedit", "pluginedit.demo")
        and not name.startswith("pluginedit.cli")
        and any(
            i == "pluginedit.api" or i.startswith("pluginedit.api.") for i in _imports(name, path)
        )
    ]
    assert not bad


def test_no_import_cycle():
    """No module reaches itself through the modules it imports (at import time or inside a
    function), counting the packages each import initialises."""
    edges = {name: _loads(name, path) for name, path in MODULES.items()}
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_only_graph_speaks_torch_pruning():
    speakers = sorted(
        name
        for name, path in MODULES.items()
        if any(i == "torch_pruning" or i.startswith("torch_pruning.") for i in _imports(name, path))
    )
    assert speakers and all(s.startswith(GRAPH + ".") for s in speakers), speakers


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_and_functions_are_short(name):
    path = MODULES[name]
    source = path.read_text()
    assert source.count("\n") <= 400, f"{path} has {source.count(chr(10))} lines (> 400)"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, f"{path}: functions over 60 lines: {long}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The layer test must be able to fail: a stats module importing scorers is caught."""
    f = tmp_path / "bad.py"
    f.write_text("from ..scorers import fidelity\n")
    imps = _imports("pluginedit.stats.bad", f)
    assert "pluginedit.scorers.fidelity" in imps
    assert LAYERS.index(_layer(imps[0])) > LAYERS.index("stats")
