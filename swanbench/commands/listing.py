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
    """Every registry name with what `optimizers.info(name)` says about it, and what is missing here."""
    import optimizers
    from rich.table import Table

    table = Table("optimizer", "source", "description", "implementation", "here",
                  title="optimizers (suite: \\[matrix] optimizer = [...], \\[optimizers.<name>] hyperparameters; "
                        "any torch.optim.Optimizer by import path \"package.module:Name\")")
    missing = optimizers.missing()
    for name in sorted(set(optimizers.registered()) | set(missing)):
        if name not in optimizers.registered():  # a broken entry point: only its reason is known
            table.add_row(name, "entry point", "", "", f"[red]broken: {missing[name]}[/]")
            continue
        info = optimizers.info(name)
        here = f"[yellow]missing: {missing[name]}[/]" if name in missing else "ok"
        if name not in missing and not getattr(info, "declared", True):
            here = "ok (memory not declared)"
        table.add_row(name, str(getattr(info, "source", "")), _describe(info),
                      str(getattr(info, "implementation", "")), here)
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
