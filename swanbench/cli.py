"""The `swanbench` command line: thin Typer commands, each a call into the library.

Commands live one per module in `swanbench.commands`; this file only registers them. Command modules
import heavy libraries (torch, pandas, matplotlib) inside the function body, so that `swanbench --help`
and suite validation answer in well under a second of import time.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="swanbench",
    help="Benchmark and memory-profile LLM optimizers (SWAN, SinkGD, Adam, ...): suites in, tidy tables out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (command name, "module:function"): one line per command; the function's annotated signature is the CLI.
COMMANDS: list[tuple[str, str]] = [
    ("run", "swanbench.commands.run:run"),
    ("list", "swanbench.commands.listing:list_"),
    ("env", "swanbench.commands.env:env"),
    ("check", "swanbench.commands.check:check"),
    ("plot", "swanbench.commands.plot:plot"),
    ("report", "swanbench.commands.report:report"),
    ("compare", "swanbench.commands.compare:compare"),
    ("estimate", "swanbench.commands.estimate:estimate"),
    ("fit", "swanbench.commands.fit:fit"),
    ("export", "swanbench.commands.export:export"),
    ("claims", "swanbench.commands.claims:claims"),
]


def _register(commands: list[tuple[str, str]]) -> None:
    for name, target in commands:
        module_name, func_name = target.split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        app.command(name)(func)


_register(COMMANDS)


def _version(value: bool) -> None:
    if value:
        from swanbench import __version__

        typer.echo(f"swanbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print swanbench's version and exit.")] = None,
) -> None:
    """Benchmark and memory-profile LLM optimizers (SWAN, SinkGD, Adam, ...): suites in, tidy tables out."""
    _full_width_when_piped(ctx)


def _full_width_when_piped(ctx: typer.Context) -> None:
    """Piped output (a CI log, `| tee`) has no window: Rich would fold every table to 80 columns. While
    this command runs, COLUMNS says `swanbench.terminal.PIPE_WIDTH`, so no table of any command is folded.
    Not for `--help`, whose panels would stretch to that width (help is parsed after this callback)."""
    import os
    import sys

    from swanbench.terminal import PIPE_WIDTH

    if os.environ.get("COLUMNS") or sys.stdout.isatty() or {"--help", "-h"} & set(sys.argv[1:]):
        return
    os.environ["COLUMNS"] = str(PIPE_WIDTH)
    ctx.call_on_close(lambda: os.environ.pop("COLUMNS", None))


def main() -> None:  # pragma: no cover - console entry point
    app()
