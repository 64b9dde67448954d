"""`swanbench list optimizers|models|suites`: what a suite may name."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class What(str, Enum):
    optimizers = "optimizers"
    models = "models"
    suites = "suites"


def list_(what: Annotated[What, typer.Argument(help="What to list.")]) -> None:
    """List the optimizers, model presets or shipped suites a suite can use."""
    from rich.console import Console

    builders = {What.optimizers: optimizers_table, What.models: models_table, What.suites: suites_table}
    Console().print(builders[what]())


def optimizers_table():
    """Registry names with what `optimizers.info(name)` says about each."""
    import optimizers
    from rich.table import Table

    table = Table("optimizer", "description", "implementation",
                  title="optimizers (suite: \\[matrix] optimizer = [...], \\[optimizers.<name>] hyperparameters)")
    for name in optimizers.available():
        info = optimizers.info(name)
        table.add_row(name, _describe(info), str(getattr(info, "implementation", "")))
    return table


def _describe(info) -> str:
    """One line from whatever info() returns (a string, a mapping, or an object with a summary)."""
    if isinstance(info, str):
        return info.strip().splitlines()[0] if info.strip() else ""
    if isinstance(info, dict):
        return "; ".join(f"{k}: {v}" for k, v in info.items() if not isinstance(v, (dict, list)))
    for attr in ("summary", "description", "doc"):
        if getattr(info, attr, None):
            return str(getattr(info, attr)).strip().splitlines()[0]
    return str(info)


def models_table():
    from rich.table import Table

    from swanbench.models import PRESETS

    table = Table("model", "params", "hidden", "intermediate", "heads", "layers", "vocab", "max positions",
                  title="LLaMA presets (random init)")
    for p in PRESETS.values():
        table.add_row(p.name, f"{p.param_count() / 1e6:.2f}M", *map(str, (p.hidden, p.intermediate, p.heads,
                                                                          p.layers, p.vocab, p.max_positions)))
    return table


def suites_table():
    from rich.table import Table

    from swanbench.suite import read_toml, shipped_suites

    table = Table("suite", "kind", "description", title="shipped suites (swanbench run NAME)")
    for name, path in shipped_suites().items():
        raw = read_toml(path)
        table.add_row(name, str(raw.get("kind", "train")), str(raw.get("description", "")))
    return table
