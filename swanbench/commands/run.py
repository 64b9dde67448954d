"""`swanbench run [SUITE]`: validate a suite, run what is not done yet, assemble the tables, publish (library:
swanbench.kinds, which hands each suite kind to its implementation)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Executor(str, Enum):
    """Where the runs execute (`swanbench.launch.cluster.EXECUTORS`; a test keeps the two lists equal)."""

    subprocess = "subprocess"
    local = "local"
    slurm = "slurm"


def run(
    suite: Annotated[Optional[str], typer.Argument(
        help="Suite file (.toml) or the name of a shipped suite (`swanbench list suites`). Default: quickstart.")]
    = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default: results/<suite>/).")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the runs; run nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Re-run runs that are already complete.")] = False,
    executor: Annotated[Executor, typer.Option(
        "--executor", help="subprocess (default: worker processes here, one after another), local (submitit's "
        "LocalExecutor: the cluster code path on this machine), slurm (one SLURM job per run, as job arrays).")]
    = Executor.subprocess,
    slurm: Annotated[Optional[list[str]], typer.Option(
        "--slurm", help="A SLURM option KEY=VALUE for --executor slurm, repeatable: partition=gpu, account=..., "
        "qos=..., time=MINUTES, cpus_per_task=N, mem=64G, constraint=...; passed to submitit as slurm_KEY.")]
    = None,
    sets: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Change the suite for this run: KEY=VALUE with a dotted key, e.g. defaults.steps=50, "
        "optimizers.swan.lr=0.01, matrix.seed=[0,1]; checked like the file; repeatable.")] = None,
    only: Annotated[Optional[list[str]], typer.Option(
        "--only", help="Run only these values of a matrix axis: AXIS=V1,V2, e.g. optimizer=swan, seed=0; "
        "repeatable.")] = None,
) -> None:
    """Run a suite: every (cell, seed) in its own process; resumes, never re-runs a finished run unless --force."""
    from swanbench.kinds import RunOptions, kind_of
    from swanbench.suite import SuiteError, load_suite
    from swanbench.terminal import make_console
    from swanbench.userfiles import output_dir_problem

    options = RunOptions(out, dry_run, force, executor.value, slurm or [], make_console())
    loaded = None
    try:
        loaded = load_suite(suite, check_names=False, sets=sets or (), only=only or ())
        options.command = run_command(suite, out, force, executor.value, slurm or [], loaded.overrides)
        problem = output_dir_problem(options.out(loaded), subdirs=("runs",), files=TABLE_FILES)
        if problem:  # before the seconds of validation, not after them
            raise SuiteError(f"--out {problem}")
        kind = kind_of(loaded)
        prepared = kind.prepare(loaded, options)
    except SuiteError as exc:
        changed = loaded is not None and loaded.overrides and "as changed by" not in str(exc)
        _fail(f"{exc} (suite {loaded.path} as changed by {' '.join(loaded.overrides)})" if changed else str(exc))
    if loaded.overrides:
        where = "" if dry_run else (f": the tables in {options.out(loaded)} will hold this variant "
                                    f"(command.txt records it)")
        options.console.print(f"suite {loaded.name} as changed by {' '.join(loaded.overrides)}{where}",
                              markup=False)
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


def run_command(suite: str | None, out: Path | None, force: bool, executor: str, slurm: list[str],
                overrides: tuple[str, ...]) -> str:
    """The command as typed when this process is the `swanbench` entry point, else as it would be typed:
    what command.txt records, overrides included."""
    import shlex

    from swanbench.terminal import own_command

    typed = own_command()
    if typed:
        return typed
    words = ["swanbench", "run", *([suite] if suite else []), *(["--out", str(out)] if out else []),
             *(["--force"] if force else []), *(["--executor", executor] if executor != "subprocess" else []),
             *(w for option in slurm for w in ("--slurm", option))]
    words += [w for override in overrides for w in override.split(" ", 1)]
    return shlex.join(words)


# The tables and pages a run writes into its output folder: a folder of one of these names is an error up front.
TABLE_FILES = ("runs.csv", "ranks.csv", "curves.csv", "kernels.csv", "machine.csv", "report.md")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
