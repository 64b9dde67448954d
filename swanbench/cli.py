"""The `swanbench` command line: thin Typer commands, each a call into the library.

Commands live one per module in `swanbench.commands`; this file only registers them. Command modules
import heavy libraries (torch, pandas, matplotlib) inside the function body, so that `swanbench --help`
and suite validation answer in well under a second of import time.

Exit codes, for every command: 0 done; 1 a regression (`swanbench check` only); 2 the command could not do
its job: bad input (a suite, a table, a baseline, a path, an option) or an unexpected error; 130
interrupted. Never a traceback: two guards turn exceptions into one line on stderr,

- `guarded` (around every command): the errors that mean "this input cannot be used" (`BAD_INPUT`:
  ValueError, the base of every swanbench error class and of decoding errors; OSError; KeyError;
  RecursionError) become `error: <what>`, exit 2;
- `SwanbenchApp.__call__` (the entry point, `swanbench` and `python -m swanbench`): anything else becomes
  `error: unexpected <type>: <what>`, exit 2, never 1, which CI would read as a regression.

`SWANBENCH_DEBUG=1` lets every exception through with its traceback (for a bug report).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Annotated, Any, Callable, Optional

import typer

from swanbench.userfiles import one_line

DEBUG_ENV = "SWANBENCH_DEBUG"
BAD_INPUT_EXIT = 2
# What a command raises for input it cannot use. ValueError is the base of SuiteError, TableError,
# CheckError, DataError, EstimateError, ExecutorError and of UnicodeDecodeError / JSONDecodeError; KeyError
# that of UnknownModelError; OSError any file or folder problem; RecursionError a document nested too deeply.
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, RecursionError)


def debugging() -> bool:
    """True when SWANBENCH_DEBUG asks for tracebacks instead of one-line errors."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, naming the file where the exception knows it."""
    if isinstance(exc, OSError) and exc.filename is not None:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return one_line(f"{target}: {exc.strerror or exc}")
    if isinstance(exc, RecursionError):
        return "input nested too deeply to read"
    if isinstance(exc, KeyError) and exc.args:
        return one_line(exc.args[0])
    return one_line(exc) or type(exc).__name__


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as a command whose bad-input errors are one line on stderr and exit code 2."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BAD_INPUT as exc:
            if debugging():
                raise
            typer.echo(f"error: {describe(exc)}", err=True)
            raise typer.Exit(BAD_INPUT_EXIT) from None

    return command


class SwanbenchApp(typer.Typer):
    """The Typer app with a last safety net: an exception no command expected is one line and exit 2."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the safety net: everything a command did not expect
            if debugging():
                raise
            typer.echo(f"error: unexpected {type(exc).__name__}: {describe(exc)} (a bug in swanbench? "
                       f"{DEBUG_ENV}=1 shows the traceback)", err=True)
            sys.exit(BAD_INPUT_EXIT)


app = SwanbenchApp(
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
        app.command(name)(guarded(func))


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
    from swanbench.terminal import PIPE_WIDTH

    if os.environ.get("COLUMNS") or sys.stdout.isatty() or {"--help", "-h"} & set(sys.argv[1:]):
        return
    os.environ["COLUMNS"] = str(PIPE_WIDTH)
    ctx.call_on_close(lambda: os.environ.pop("COLUMNS", None))


def main() -> None:  # pragma: no cover - console entry point
    app()
