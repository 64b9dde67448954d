"""`swanbench report RESULTS`: write RESULTS/report.md from the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def report(
    results: Annotated[Path, typer.Argument(
        help="Results directory holding runs.csv / curves.csv / kernels.csv.")],
    baseline: Annotated[Optional[str], typer.Option(
        help="Optimizer the Diff % columns compare against (default: the suite's declared baseline, else adamw).")] = None,
    command: Annotated[Optional[str], typer.Option(
        help="The command that produced the results (default: RESULTS/command.txt or env.json).")] = None,
) -> None:
    """Write RESULTS/report.md: environment, command, per-cell tables with n, mean, spread and Diff %."""
    from swanbench.analysis.report import write_report
    from swanbench.analysis.results import baseline_hint, load_results, resolve_baseline
    from swanbench.tables import TableError

    try:
        if baseline is not None:  # asked for by name: a typo is an error, not a report without Diff %
            runs = load_results(results).runs
            if runs is not None and resolve_baseline(runs, baseline) is None:
                raise ValueError(f"baseline {baseline!r} is not an optimizer in {results}"
                                 f"{baseline_hint(runs, baseline)}")
        path = write_report(results, baseline=baseline, command=command)
    except (TableError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(path))
