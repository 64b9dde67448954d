"""Suite kinds: what `swanbench run SUITE` does with a suite of each `kind`, behind one small protocol.

A kind has three steps, called in order by the CLI:

- `prepare(suite, options)`: every check that can fail before anything runs (names, devices, executors,
  the kind's own table); raises `SuiteError` (one line naming the file and key);
- `dry_run(prepared, options)`: print what would run;
- `run(prepared, options)`: run it, write the tables, publish figures and the report.

`KINDS` maps a suite's `kind` to its implementation: "train" (the runner: cells x seeds in fresh
processes) and "kernels" (operator micro-benchmarks). A new kind is one entry here and one in
`swanbench.suite.KIND_TABLES` (the table it holds); nothing else asks which kind a suite is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from rich.markup import escape

from swanbench.suite import Suite, SuiteError


@dataclass
class RunOptions:
    """What the command line says about a run of a suite (the suite file says everything else)."""

    out_dir: Path | None = None
    dry_run: bool = False
    force: bool = False
    executor: str = "subprocess"
    slurm: Sequence[str] = ()
    console: Any = None
    started: float = field(default_factory=time.perf_counter)
    command: str | None = None  # the command line, overrides included, recorded in OUT/command.txt

    def out(self, suite: Suite) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else Path("results") / suite.name


class SuiteKind(Protocol):
    def prepare(self, suite: Suite, options: RunOptions) -> Any: ...

    def dry_run(self, prepared: Any, options: RunOptions) -> None: ...

    def run(self, prepared: Any, options: RunOptions) -> None: ...


@dataclass
class _TrainRun:
    suite: Suite
    dispatcher: Any


class TrainKind:
    """A train suite: every (cell, seed) in its own process, resume, tables, verdicts, figures, report."""

    def prepare(self, suite: Suite, options: RunOptions) -> _TrainRun:
        from swanbench import runner
        from swanbench.launch.cluster import ExecutorError, make_dispatcher
        from swanbench.suite import check_names_and_models, check_runtime, check_tune_runtime

        planned = runner.plan(suite, options.out(suite), options.force)
        # Every run complete: each ran with these exact names, so a resume answers without importing torch.
        # (A tuned suite's evaluation cells are known only after tuning: it is always checked.)
        if options.dry_run or suite.tune is not None or not all(p.skip for p in planned):
            check_names_and_models(suite)
            check_runtime(suite, check_devices=not options.dry_run)
            check_tune_runtime(suite)
        try:  # bad executors and cluster options fail before anything runs
            dispatcher = make_dispatcher(options.executor, options.out(suite), options.slurm)
            if dispatcher is not None:
                dispatcher.check(suite.cells)
        except ExecutorError as exc:
            raise SuiteError(str(exc)) from None
        return _TrainRun(suite, dispatcher)

    def dry_run(self, prepared: _TrainRun, options: RunOptions) -> None:
        from swanbench import runner

        suite, out_dir = prepared.suite, options.out(prepared.suite)
        if suite.tune is not None:
            from swanbench import tuning

            trials, runs, summary = tuning.plan_tables(suite, out_dir, options.force)
            for part in (trials, runs, summary):
                options.console.print(part)
            return
        planned = runner.plan(suite, out_dir, options.force)
        options.console.print(runner.plan_table(suite, planned))
        todo = sum(not p.skip for p in planned)
        options.console.print(f"{len(planned)} runs ({len(suite.cells)} cells x {len(suite.seeds)} seeds), "
                              f"{todo} to run, output {out_dir}", markup=False)

    def run(self, prepared: _TrainRun, options: RunOptions) -> None:
        from swanbench import runner, schema

        out_dir = options.out(prepared.suite)
        suite, tuned = prepared.suite, None
        if suite.tune is not None:  # tune every optimizer first; the evaluation cells carry the chosen values
            from swanbench import tuning

            tuned = tuning.tune(suite, out_dir, force=options.force, console=options.console,
                                dispatcher=prepared.dispatcher)
            for line in tuned.left_out:
                options.console.print(f"[yellow]not evaluated:[/] {escape(line)}")
            suite = tuned.suite
        outcome = runner.run_suite(suite, out_dir, force=options.force, console=options.console,
                                   dispatcher=prepared.dispatcher, publish=tuned is None or bool(suite.cells),
                                   command=options.command)
        if tuned is not None and tuned.executed and not outcome.executed:
            from swanbench.analysis.publish import publish_suite

            publish_suite(out_dir, options.console, baseline=suite.baseline, command=options.command)  # tuning changed what is reported
        options.console.print(runner.summary_table(out_dir))
        took = time.perf_counter() - options.started
        trials = f"{len(tuned.executed)} tuning trial runs and " if tuned is not None else ""
        options.console.print(f"{trials}{len(outcome.executed)} runs executed, {len(outcome.skipped)} already complete; "
                              f"tables: {out_dir / schema.RUNS_FILE}, {out_dir / schema.CURVES_FILE}; "
                              f"took {took:.1f} s", markup=False)


class KernelKind:
    """A kernels suite: operator micro-benchmarks against the device's own measured limits."""

    def prepare(self, suite: Suite, options: RunOptions) -> Any:
        from swanbench import kernels

        try:
            return kernels.load_kernel_suite(suite.kernels, suite.path)
        except ValueError as exc:
            raise SuiteError(str(exc)) from None

    def dry_run(self, prepared: Any, options: RunOptions) -> None:
        options.console.print(f"{prepared.path}: kernel suite {prepared.name!r} is valid", markup=False)

    def run(self, prepared: Any, options: RunOptions) -> None:
        from swanbench import kernels
        from swanbench.analysis.publish import publish_suite

        out_dir = options.out(prepared)
        path = kernels.run_kernel_suite(prepared, out_dir, options.console)
        options.console.print(f"kernels table: {path}")
        publish_suite(out_dir, options.console, command=options.command)


KINDS: dict[str, SuiteKind] = {"train": TrainKind(), "kernels": KernelKind()}


def kind_of(suite: Suite) -> SuiteKind:
    return KINDS[suite.kind]
