"""The `swanbench` command line: thin Typer commands, each a call into the library.

Commands live one per module in `swanbench.commands`; this file only registers them. Command modules
import heavy libraries (torch, pandas, matplotlib) inside the function body, so that `swanbench --help`
and suite validation answer in well under a second of import time.
"""

from __future__ import annotations

import importlib

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
    ("estimate", "swanbench.commands.estimate:estimate"),
    ("fit", "swanbench.commands.fit:fit"),
    ("claims", "swanbench.commands.claims:claims"),
]


def _register(commands: list[tuple[str, str]]) -> None:
    for name, target in commands:
        module_name, func_name = target.split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        app.command(name)(func)


_register(COMMANDS)


def main() -> None:  # pragma: no cover - console entry point
    app()
