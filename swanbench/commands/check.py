"""`swanbench check RESULTS --baseline FILE`: the CI regression gate (library: swanbench.analysis.check)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def check(
    results: Annotated[Path, typer.Argument(help="Results directory holding runs.csv (or a runs.csv file).")],
    baseline: Annotated[Path, typer.Option("--baseline", "-b", help="Baseline runs.csv to compare against.")],
    tolerances: Annotated[Optional[Path], typer.Option(
        help="Tolerances TOML (default: <baseline stem>.tolerances.toml beside the baseline if present, "
             "else the built-in bands).")] = None,
    summary: Annotated[Optional[Path], typer.Option(
        help="Also write the markdown summary here (it always goes to RESULTS/check.md).")] = None,
    update: Annotated[bool, typer.Option(
        "--update", help="Deliberately write RESULTS' runs as the new baseline (shows the comparison first).")]
    = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the verdict and every finding as JSON on stdout (the same exit codes).")] = False,
) -> None:
    """Compare a results set against a committed baseline; exit 1 on a regression, 2 on bad input."""
    from swanbench.analysis import check as gate
    from swanbench.userfiles import output_file_problem

    try:
        for flag, target in (("--summary", summary), ("--baseline", baseline if update else None)):
            problem = output_file_problem(target) if target is not None else None
            if problem:  # before the comparison, not after it
                raise gate.CheckError(f"{flag} {problem}")
        tol = gate.load_tolerances(tolerances) if tolerances else None
        if update:
            _update(gate, results, baseline, tol)
            return
        report = gate.check(results, baseline, tol)
    except (gate.CheckError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        import json

        typer.echo(json.dumps(gate.report_dict(report), indent=2, default=str))
    else:
        typer.echo(gate.render_text(report))
    targets = [_summary_home(gate, results)] + ([summary] if summary is not None else [])
    try:
        written = [gate.write_summary(report, path) for path in targets]
    except OSError as exc:
        typer.echo(f"error: cannot write the summary: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo("summary: " + ", ".join(str(p) for p in written), err=as_json)  # stdout stays pure JSON
    if not report.passed:
        raise typer.Exit(1)


def _summary_home(gate, results: Path) -> Path:
    runs = gate.runs_path(results)
    return runs.parent / gate.SUMMARY_FILE


def _update(gate, results: Path, baseline: Path, tol) -> None:
    """Show what changes (when an old baseline is readable), then overwrite it."""
    if baseline.is_file():
        try:
            typer.echo(gate.render_text(gate.check(results, baseline, tol)))
        except gate.CheckError as exc:
            typer.echo(f"(old baseline not comparable: {exc})")
    count = gate.update_baseline(results, baseline, tol)
    typer.echo(f"wrote baseline {baseline} ({count} runs); review and commit it")
