"""`swanbench compare A B ...`: one suite's result sets from several devices, side by side (library:
swanbench.analysis.compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def compare(
    results: Annotated[list[Path], typer.Argument(
        help="Two or more results directories of the same suite, each made on its own device.")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Where to write compare.md and figures/ (default: results/compare/<suite>).")] = None,
    formats: Annotated[Optional[list[str]], typer.Option(
        "--format", "-f", help="png, svg or pdf; repeat for several (default: png and svg).")] = None,
    baseline: Annotated[Optional[str], typer.Option(
        help="Optimizer the noise judgement compares with (default: the suite's declared baseline).")] = None,
) -> None:
    """Check the sets ask the same question, say what differs, and draw the measures coloured by device."""
    from swanbench.analysis.compare import CompareError, compare as run_compare, load_sets
    from swanbench.analysis.figures import check_formats
    from swanbench.analysis.figures.compare import draw_compare

    try:
        formats_ = check_formats(formats or ("png", "svg"))
        target = out or Path("results") / "compare" / (load_sets(results)[0].first("suite") or "suite")
        comparison, frame, base, table = run_compare(results, target, baseline)
        written = [table, *draw_compare(frame, comparison, base, target, formats_)]
    except (CompareError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo("devices: " + "; ".join(f"{s.label} ({s.path})" for s in comparison.sets))
    for line in comparison.differences:
        typer.echo(f"differs: {line}")
    for path in written:
        typer.echo(str(path))
