"""What every command shows on the terminal besides its results: warnings as one line each, and
the closing line saying what ran and how long it took."""

from __future__ import annotations

import contextlib
import sys
import warnings


@contextlib.contextmanager
def one_line_warnings():
    """A warning is one line on stderr (its category and message), never the source line that
    raised it; the previous handler comes back when the command ends."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"pluginedit: warning: {category.__name__}: {text}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def summary(args, code: int, seconds: float) -> None:
    """The closing line of a command that did work: what ran, how it ended, how long it took."""
    if args.command in ("plugins", "bench"):
        return
    ran = getattr(args, "ran", None)
    ended = "done" if code == 0 else f"exit status {code}"
    print(f"pluginedit {args.command}: {ended} in {seconds:.1f}s" + (f" ({ran})" if ran else ""))
