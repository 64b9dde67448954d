"""`swanbench run [SUITE]`: validate a suite, run what is not done yet, assemble the tables (library: swanbench.runner)."""

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
    import time

    from swanbench.suite import SuiteError, check_names_and_models, check_runtime, load_suite

    from swanbench import runner

    started = time.perf_counter()
    try:
        loaded = load_suite(suite, check_names=False)
        if loaded.kind == "kernels":
            _run_kernels(loaded, out, dry_run)
            return
        planned = runner.plan(loaded, out or runner.default_out_dir(loaded), force)
        # Every cell complete: each ran with these exact names, so a resume answers without importing torch.
        if dry_run or not all(p.skip for p in planned):
            check_names_and_models(loaded)
            check_runtime(loaded, check_devices=not dry_run)
    except SuiteError as exc:
        _fail(str(exc))
    _run_train(loaded, out, dry_run, force, started, executor, slurm or [])


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _run_train(loaded, out: Optional[Path], dry_run: bool, force: bool, started: float,
               executor: str = "subprocess", slurm: list[str] = ()) -> None:
    import time

    from rich.console import Console

    from swanbench import runner
    from swanbench.executors import ExecutorError, make_dispatcher

    console = Console()
    out_dir = out or runner.default_out_dir(loaded)
    try:  # bad executors and cluster options fail before anything runs
        dispatcher = make_dispatcher(executor, out_dir, slurm)
        if dispatcher is not None:
            dispatcher.check(loaded.cells)
    except ExecutorError as exc:
        _fail(str(exc))
    planned = runner.plan(loaded, out_dir, force)
    if dry_run:
        console.print(runner.plan_table(loaded, planned))
        todo = sum(not p.skip for p in planned)
        console.print(f"{len(planned)} runs ({len(loaded.cells)} cells x {len(loaded.seeds)} seeds), "
                      f"{todo} to run, output {out_dir}")
        return
    from swanbench import plots, quality

    # After the tables: quality's summary/verdicts first, then figures and the report (which shows the verdicts).
    for hook in (quality.publish_hook, plots.publish):
        if hook not in runner.POST_ASSEMBLY_HOOKS:
            runner.POST_ASSEMBLY_HOOKS.append(hook)
    try:
        outcome = runner.run_suite(loaded, out_dir, force=force, console=console, dispatcher=dispatcher)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: completed runs are kept in {out_dir}; run again to resume", err=True)
        raise typer.Exit(130) from None
    console.print(runner.summary_table(out_dir))
    took = time.perf_counter() - started
    console.print(f"{len(outcome.executed)} runs executed, {len(outcome.skipped)} already complete; "
                  f"tables: {out_dir / 'runs.csv'}, {out_dir / 'curves.csv'}; took {took:.1f} s")


def _run_kernels(loaded, out: Optional[Path], dry_run: bool) -> None:
    """A kind = "kernels" suite: validated and run by swanbench.kernels."""
    from rich.console import Console

    from swanbench import runner
    from swanbench.suite import SuiteError

    try:
        from swanbench import kernels
    except ImportError as exc:
        _fail(f"{loaded.path}: kind = \"kernels\" needs swanbench.kernels, which is not importable ({exc})")
    try:
        kernel_suite = kernels.load_kernel_suite(loaded.kernels, loaded.path)
    except ValueError as exc:
        _fail(str(exc))
    if dry_run:
        typer.echo(f"{loaded.path}: kernel suite {loaded.name!r} is valid")
        return
    try:
        path = kernels.run_kernel_suite(kernel_suite, out or runner.default_out_dir(loaded), Console())
    except SuiteError as exc:  # e.g. a method whose operator the optimizers package lacks
        _fail(str(exc))
    typer.echo(f"kernels table: {path}")
