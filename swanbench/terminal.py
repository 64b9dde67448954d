"""What the command line prints to: a terminal, or a pipe / CI log; and the command line itself.

In a terminal Rich draws live progress bars and fits tables to the window. Piped (a CI log, `| tee`,
`> file`) there is no window: Rich would assume 80 columns and fold every table into unreadable slivers
(`statu s`, `optim…`), and a live bar only prints when it ends. So when the output is not a terminal,
`make_console` gives a console as wide as any table needs (unless COLUMNS says otherwise), and callers
print plain progress lines instead of bars (`is_terminal`).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

# Columns for output that is not a terminal: wider than any table swanbench prints, so none is folded.
PIPE_WIDTH = 1000


def make_console(stderr: bool = False):
    """A Rich console: a terminal's own width, or PIPE_WIDTH columns when piped (COLUMNS, if set, wins)."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(stderr=stderr, width=PIPE_WIDTH)


def is_terminal(console) -> bool:
    """Whether `console` writes to an interactive terminal (live progress bars work there)."""
    return bool(getattr(console, "is_terminal", False))


def own_command(argv: list[str] | None = None) -> str | None:
    """This process's command line when it is swanbench's (`swanbench ...` or `python -m swanbench ...`)."""
    argv = sys.argv if argv is None else argv
    program = Path(argv[0]) if argv else Path()
    if program.name == "swanbench":
        return shlex.join(["swanbench", *argv[1:]])
    if program.name == "__main__.py" and program.parent.name == "swanbench":
        return shlex.join(["python", "-m", "swanbench", *argv[1:]])
    return None
