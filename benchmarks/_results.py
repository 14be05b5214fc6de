"""Where benchmark results go, and the stamp every result carries. Used by every script here.

Output folder (``out_dir``), the same rule for every script's ``--out DIR``:

* ``--out DIR`` given: results go to DIR, exactly as given. The committed results are updated
  only this way:  ``python benchmarks/<script>.py ... --out benchmarks/results``;
* else ``$PLUGINEDIT_BENCH_OUT/<script>/`` when that variable is set;
* else ``bench-out/<script>/`` at the root of this checkout (git-ignored scratch).

So a run never overwrites ``benchmarks/results/`` unless asked to. Scripts that read earlier
results back (``--merge``, ``--only``, ``--summarise-only``) read them from the same folder.

Every result is stamped (``stamp``): the machine (CPU model, cores, torch threads, GPU), the exact
command line, the versions of python, pluginedit, torch, triton, torch-pruning, transformers and
numpy (None: not installed), the UTC date and the git commit (and whether the tree had local
changes). ``write(stem, obj, markdown)`` writes ``<stem>.json`` with the stamp under the
``"stamp"`` key (a list is wrapped as ``{"stamp": ..., "rows": [...]}``; ``read`` unwraps it) and
``<stem>.md`` with a short stamp header under its title. Files are written whole
(``pluginedit.core.files.written_whole``): an interrupted run leaves the previous file or none,
never half of one.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMITTED = HERE / "results"  # the committed results: only with an explicit --out
SCRATCH = ROOT / "bench-out"  # the default, git-ignored
ENV = "PLUGINEDIT_BENCH_OUT"
# distribution names whose versions go into every stamp
PACKAGES = ("pluginedit", "torch", "triton", "torch-pruning", "transformers", "numpy")


def out_help(script: str, what: str = "results folder") -> str:
    """The ``--out`` help text of ``script``."""
    return (
        f"{what} (default: ${ENV}/{script}/ if set, else bench-out/{script}/ at the "
        "checkout's root, git-ignored; pass --out benchmarks/results to update the committed results)"
    )


def out_dir(args_out: str | Path | None, script: str | None = None) -> Path:
    """The folder results go to (created): ``args_out`` when given (the committed
    ``benchmarks/results`` only this way), else ``$PLUGINEDIT_BENCH_OUT/<script>/``, else
    ``<checkout>/bench-out/<script>/``. ``script`` defaults to the caller's file name."""
    if args_out not in (None, ""):
        folder = Path(args_out)
    else:
        if script is None:
            script = Path(sys._getframe(1).f_globals.get("__file__", "bench")).stem
        base = os.environ.get(ENV)
        folder = (Path(base) if base else SCRATCH) / script
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict:
    def git(*args):
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "-uno")),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def command(argv: list[str] | None = None) -> str:
    """The command line as typed: ``python <script> args`` for a script, else the program's name
    and its arguments (``pluginedit bench kernels ...``)."""
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "python"
    if prog.endswith(".py") or prog in ("-c", "-", ""):
        return shlex.join(["python", prog, *argv[1:]])
    return shlex.join([Path(prog).name, *argv[1:]])


def stamp(argv: list[str] | None = None) -> dict:
    """What made a result: machine, command, package versions, UTC date, git commit."""
    machine = {
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": None,
        "gpu": None,
    }
    try:
        import torch

        machine["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            machine["gpu"] = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - a stamp never stops a run from being written
        pass
    versions = {"python": platform.python_version()} | {p: _version(p) for p in PACKAGES}
    return {
        "machine": machine,
        "command": command(argv),
        "versions": versions,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": _git(),
    }


def header(s: dict) -> str:
    """The stamp as a few markdown lines."""
    m, g = s["machine"], s.get("git") or {}
    gpu = m.get("gpu") or "none"
    threads = f", {m['torch_threads']} torch threads" if m.get("torch_threads") else ""
    installed = ", ".join(f"{k} {v}" for k, v in s["versions"].items() if v)
    missing = [k for k, v in s["versions"].items() if not v]
    commit = (g.get("commit") or "unknown")[:12] + (
        " (with local changes)" if g.get("dirty") else ""
    )
    return (
        "\n".join(
            [
                f"- Machine: {m['cpu']}, {m['cores']} cores{threads}; GPU: {gpu}",
                f"- Command: `{s['command']}`",
                f"- Versions: {installed}"
                + (f" (not installed: {', '.join(missing)})" if missing else ""),
                f"- Date: {s['date']}; git commit {commit}",
            ]
        )
        + "\n"
    )


def stamped(obj, s: dict) -> dict:
    """``obj`` with the stamp ``s`` under "stamp" (a list becomes ``{"stamp": s, "rows": obj}``).
    A stamp ``obj`` already holds (partial re-runs: ``--only``) is kept as ``s["earlier"]``."""
    if not isinstance(obj, dict):
        return {"stamp": s, "rows": obj}
    old = obj.get("stamp")
    if isinstance(old, dict):
        s = s | {"earlier": {k: v for k, v in old.items() if k != "earlier"}}
    return {"stamp": s} | {k: v for k, v in obj.items() if k != "stamp"}


def with_header(markdown: str, s: dict) -> str:
    """``markdown`` with the stamp's header under its first ``# `` title (on top if it has none)."""
    if markdown.startswith("# "):
        title, _, rest = markdown.partition("\n")
        return f"{title}\n\n{header(s)}\n{rest.lstrip(chr(10))}"
    return f"{header(s)}\n{markdown}"


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole (parent folders created)."""
    from pluginedit.core.files import written_whole  # here: importing this module stays cheap

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: str | Path, obj, s: dict | None = None, indent: int = 1) -> Path:
    """``obj`` stamped (``stamped``) as JSON at ``path``, written whole."""
    return write_text(path, json.dumps(stamped(obj, s or stamp()), indent=indent) + "\n")


def write_markdown(path: str | Path, markdown: str, s: dict | None = None) -> Path:
    """``markdown`` with the stamp header (``with_header``) at ``path``, written whole."""
    return write_text(path, with_header(markdown, s or stamp()))


def write(
    stem: str | Path, obj, markdown: str | None = None, s: dict | None = None, indent: int = 1
) -> dict:
    """``<stem>.json`` (``obj`` with the stamp under "stamp") and, given ``markdown``,
    ``<stem>.md`` with the stamp header; both written whole. Returns the stamp used."""
    stem = Path(stem)
    s = s or stamp()
    write_json(stem.with_name(stem.name + ".json"), obj, s, indent)
    if markdown is not None:
        write_markdown(stem.with_name(stem.name + ".md"), markdown, s)
    return s


def read(path: str | Path):
    """A results file as its script wrote it: a wrapped list unwrapped (its stamp dropped); a
    dict as it is, its stamp included (``write`` keeps that as the new stamp's "earlier"). Files
    from before the stamp read as they are."""
    obj = json.loads(Path(path).read_text())
    if isinstance(obj, dict) and "stamp" in obj and set(obj) == {"stamp", "rows"}:
        return obj["rows"]
    return obj


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` written whole (the format from ``path``'s suffix)."""
    from pluginedit.core.files import written_whole

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path
