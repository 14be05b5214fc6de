"""The layering of the package, read from its source: a layer imports only the layers below it,
nothing imports the façade, torch-pruning is spoken in one file, and files and functions stay
short enough to read."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pluginedit"
# Lowest first; a module may import its own layer and the ones before it.
LAYERS = ["core", "linalg", "ops", "stats", "capture", "scorers", "editors", "io",
          "report", "api", "demo", "cli"]
CONTRIB_USERS = {"cli", "api", "demo", "contrib"}
TP_ADAPTER = "pluginedit.editors._tp"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["pluginedit", *parts])] = f
    return out


def _imports(name: str, path: Path) -> list[str]:
    """Absolute names of every module ``name`` imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append(base)
            found += [f"{base}.{a.name}" for a in node.names]   # "from . import x" imports x
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pluginedit" or len(parts) < 2:
        return None
    return "ops" if parts[1] == "triton_kernels" else parts[1]   # the kernels behind the ops


MODULES = _modules()


def test_layers_import_only_downwards():
    bad = []
    for name, path in MODULES.items():
        mine = _layer(name)
        if mine is None:          # the package's __init__: the public verbs and types
            continue
        for imp in _imports(name, path):
            theirs = _layer(imp)
            if theirs is None or theirs == mine or imp not in MODULES and imp.rsplit(".", 1)[0] not in MODULES:
                continue
            if theirs == "contrib":
                if mine not in CONTRIB_USERS:
                    bad.append(f"{name} imports {imp} (contrib is for cli/api only)")
                continue
            if mine == "contrib":
                if theirs in ("api", "cli"):
                    bad.append(f"{name} imports {imp}")
                continue
            if mine == "scorers" and imp.startswith(TP_ADAPTER):
                continue          # the torch-pruning adapter's helpers (taylor, fidelity consumers)
            if theirs in LAYERS and mine in LAYERS and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{name} ({mine}) imports {imp} ({theirs})")
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_facade():
    bad = [name for name, path in MODULES.items() if name not in ("pluginedit", "pluginedit.demo")
           and not name.startswith("pluginedit.cli")
           and any(i == "pluginedit.api" or i.startswith("pluginedit.api.") for i in _imports(name, path))]
    assert not bad


def test_only_the_adapter_speaks_torch_pruning():
    speakers = sorted(name for name, path in MODULES.items()
                      if any(i == "torch_pruning" or i.startswith("torch_pruning.") for i in _imports(name, path)))
    assert speakers == [TP_ADAPTER]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_and_functions_are_short(name):
    path = MODULES[name]
    source = path.read_text()
    assert source.count("\n") <= 400, f"{path} has {source.count(chr(10))} lines (> 400)"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > 60]
    assert not long, f"{path}: functions over 60 lines: {long}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The layer test must be able to fail: a stats module importing scorers is caught."""
    f = tmp_path / "bad.py"
    f.write_text("from ..scorers import fidelity\n")
    imps = _imports("pluginedit.stats.bad", f)
    assert "pluginedit.scorers.fidelity" in imps
    assert LAYERS.index(_layer(imps[0])) > LAYERS.index("stats")
