"""`swanbench plot RESULTS`: draw the figures of a results directory from its tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def plot(
    results: Annotated[Path, typer.Argument(
        help="Results directory holding runs.csv / curves.csv / kernels.csv.")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Where to write figures (default: RESULTS/figures).")] = None,
    formats: Annotated[Optional[list[str]], typer.Option(
        "--format", "-f", help="png, svg or pdf; repeat for several (default: png and svg).")] = None,
    baseline: Annotated[Optional[str], typer.Option(
        help="Optimizer whose final perplexity is drawn as the reference line (default: the suite's "
             "declared baseline, else adamw).")] = None,
    only: Annotated[Optional[list[str]], typer.Option(
        "--only", help="Draw only these figures (memory, time, kernels, perplexity, pareto); repeatable.")] = None,
) -> None:
    """Draw memory, time, kernel, perplexity and Pareto figures from the tables (never from logs)."""
    from swanbench.analysis.figures import draw_figures
    from swanbench.tables import TableError
    from swanbench.userfiles import output_dir_problem

    problem = output_dir_problem(out) if out is not None else None
    if problem:
        typer.echo(f"error: --out {problem}", err=True)
        raise typer.Exit(2)
    try:
        done = draw_figures(results, out, formats or ("png", "svg"), baseline=baseline, only=only)
    except (TableError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in done.paths:
        typer.echo(str(path))
    for name, reason in done.skipped.items():
        typer.echo(f"{name}: skipped ({reason})")
