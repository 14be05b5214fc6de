"""The documentation cannot rot: every ```python block of the plugin guide runs, in order, in
one namespace (```py blocks are shown, not run); the CLI page names every subcommand and flag
of the parser; the methods page names the class of every built-in plugin; the getting-started
page carries README's two commands verbatim; and the site builds with ``mkdocs build --strict``
(a broken reference or docstring fails), where mkdocs is installed (``pip install -e ".[docs]"``,
part of ``.[test]``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = DOCS / "pages"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)


def blocks(page: Path, lang: str) -> list[tuple[int, str]]:
    """(line number, code) of the fenced blocks of ``page`` whose info string is exactly ``lang``."""
    text = page.read_text()
    return [
        (text[: m.start()].count("\n") + 1, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1).strip() == lang
    ]


def test_plugin_guide_runs(monkeypatch):
    monkeypatch.setenv("PLUGINEDIT_DISABLE_PLUGIN_AUTOLOAD", "1")  # only what the page defines
    from pluginedit.core import registry

    registry.refresh()
    page = PAGES / "plugins.md"
    code = blocks(page, "python")
    assert len(code) >= 10
    module = types.ModuleType("docs_plugins")  # a real module: dataclasses and typing look it up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    try:
        for line, src in code:
            try:  # dont_inherit: this file's __future__ imports must not leak into the page's code
                exec(compile(src, f"{page}:{line}", "exec", dont_inherit=True), module.__dict__)
            except Exception as e:
                raise AssertionError(
                    f"{page.name}, the block at line {line} failed: {type(e).__name__}: {e}"
                ) from e
    finally:
        registry.refresh()


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from pluginedit import cli

    ap = cli.parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_cli_page_names_every_command_and_flag():
    text = (PAGES / "cli.md").read_text()
    missing = []
    for name, p in _subcommands().items():
        if f"pluginedit {name}" not in text:
            missing.append(f"pluginedit {name}")
        for action in p._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help") and not re.search(
                    re.escape(flag) + r"(?![\w-])", text
                ):
                    missing.append(f"{name} {flag}")
    assert not missing, f"docs/pages/cli.md does not mention: {missing}"


def test_methods_page_names_every_builtin_plugin_class():
    from importlib.metadata import entry_points

    text = (PAGES / "methods.md").read_text()
    builtins = [
        ep
        for group in ("pluginedit.scorers", "pluginedit.editors")
        for ep in entry_points(group=group)
        if ep.dist is not None and ep.dist.name == "pluginedit"
    ]
    assert len(builtins) >= 20
    missing = [
        f"{ep.name} = {ep.value}"
        for ep in builtins
        if f"`{ep.name}`" not in text or ep.value.replace(":", ".") not in text
    ]
    assert not missing, f"docs/pages/methods.md lacks: {missing}"


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```\n(.*?)```\s*<!-- /{marker} -->", text, re.S)
    assert m, marker
    return m.group(1).strip()


def test_getting_started_carries_the_two_readme_commands():
    text = (PAGES / "index.md").read_text()
    for marker in ("demo-command", "test-command"):
        assert _readme_block(marker) in text, f"docs/pages/index.md lacks README's {marker}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason='mkdocs is not installed (pip install -e ".[docs]")',
)
def test_site_builds_in_strict_mode(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(DOCS / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "plugins" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()
