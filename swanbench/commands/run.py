"""`swanbench run [SUITE]`: validate a suite, run what is not done yet, assemble the tables, publish (library:
swanbench.kinds, which hands each suite kind to its implementation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def run(
    suite: Annotated[Optional[str], typer.Argument(
        help="Suite file (.toml) or the name of a shipped suite (`swanbench list suites`). Default: quickstart.")]
    = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default: results/<suite>/).")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the runs; run nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Re-run runs that are already complete.")] = False,
    executor: Annotated[str, typer.Option(
        "--executor", help="subprocess (default: worker processes here, one after another), local (submitit's "
        "LocalExecutor: the cluster code path on this machine), slurm (one SLURM job per run, as job arrays).")]
    = "subprocess",
    slurm: Annotated[Optional[list[str]], typer.Option(
        "--slurm", help="A SLURM option KEY=VALUE for --executor slurm, repeatable: partition=gpu, account=..., "
        "qos=..., time=MINUTES, cpus_per_task=N, mem=64G, constraint=...; passed to submitit as slurm_KEY.")]
    = None,
) -> None:
    """Run a suite: every (cell, seed) in its own process; resumes, never re-runs a finished run unless --force."""
    from rich.console import Console

    from swanbench.kinds import RunOptions, kind_of
    from swanbench.suite import SuiteError, load_suite
    from swanbench.userfiles import output_dir_problem

    options = RunOptions(out, dry_run, force, executor, slurm or [], Console())
    try:
        loaded = load_suite(suite, check_names=False)
        problem = output_dir_problem(options.out(loaded), subdirs=("runs",), files=TABLE_FILES)
        if problem:  # before the seconds of validation, not after them
            raise SuiteError(f"--out {problem}")
        kind = kind_of(loaded)
        prepared = kind.prepare(loaded, options)
    except SuiteError as exc:
        _fail(str(exc))
    if dry_run:
        kind.dry_run(prepared, options)
        return
    try:
        kind.run(prepared, options)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: completed runs are kept in {options.out(loaded)}; run again to resume", err=True)
        raise typer.Exit(130) from None
    except SuiteError as exc:  # e.g. a kernel method whose operator the optimizers package lacks
        _fail(str(exc))


# The tables and pages a run writes into its output folder: a folder of one of these names is an error up front.
TABLE_FILES = ("runs.csv", "ranks.csv", "curves.csv", "kernels.csv", "machine.csv", "report.md")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
