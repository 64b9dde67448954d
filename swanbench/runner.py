"""Run a train suite: plan (resume), launch every (cell, seed) in a fresh process, assemble the tables, publish.

The flow of `swanbench run SUITE` for suites of kind "train", top to bottom in `run_suite`:

1. `plan`: every run of the suite with its folder (`OUT/runs/<run_id>/`, `swanbench.rundir`) and the status
   of an earlier attempt; resume skips runs whose status is final (`schema.FINAL_STATUSES`: ok, oom,
   diverged); timeout and crashed runs are retried; `force` re-runs all.
2. launch each run (`swanbench.launch`: a worker process here, torchrun for several ranks, or submitit);
3. `assemble` after every run: OUT/runs.csv (one row per run, with tokens-to-target against the suite's
   baseline), OUT/ranks.csv (per-rank rows of multi-rank runs), OUT/curves.csv, all written atomically, so
   Ctrl-C or a kill between runs loses nothing measured;
4. publish (`swanbench.analysis.publish`): quality verdicts, figures and the report, from the tables alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from swanbench import rundir, schema, userfiles
from swanbench.launch import WORKER_CMD, cell_worker_cmd, execute
from swanbench.suite import Run, Suite, SuiteError


@dataclass
class PlannedRun:
    run: Run
    run_dir: Path
    previous_status: str | None  # status of an earlier attempt, None if never completed

    @property
    def skip(self) -> bool:
        return self.previous_status in schema.FINAL_STATUSES


@dataclass
class SuiteOutcome:
    out_dir: Path
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


# ---------------------------------------------------------------- planning and resume

def default_out_dir(suite: Suite) -> Path:
    return Path("results") / suite.name


def plan(suite: Suite, out_dir: Path, force: bool = False) -> list[PlannedRun]:
    """Every (cell, seed) with its run directory and, unless `force`, the status of an earlier attempt."""
    planned = []
    for run in suite.runs():
        run_dir = Path(out_dir) / "runs" / run.run_id
        planned.append(PlannedRun(run, run_dir, None if force else rundir.run_status(run_dir)))
    return planned


def run_config(suite: Suite, run: Run) -> dict[str, Any]:
    """config.json of a run: the resolved cell and seed, the suite, and the baseline its verdicts use."""
    return {"suite": suite.name, "suite_path": str(suite.path), "baseline": suite.baseline,
            "run_id": run.run_id, "cell_id": run.cell.cell_id, "seed": run.seed, "cell": run.cell.to_dict()}


def write_config(suite: Suite, run: Run, run_dir: Path) -> None:
    rundir.write_config(run_dir, run_config(suite, run))


# ---------------------------------------------------------------- the suite tables

def assemble(out_dir: Path, planned: Sequence[PlannedRun], baseline: str | None = None) -> tuple[Path, Path]:
    """(Re)write OUT/runs.csv, OUT/ranks.csv and OUT/curves.csv from this suite's run folders, atomically.

    runs.csv gets the tokens-to-target columns against `baseline` here, once: they need the baseline's run
    of the same cell and seed, so they are a suite-level fact no single run can write.
    """
    from swanbench.analysis.quality import annotate_rows
    from swanbench.tables import write_rows_atomic

    runs, ranks, curves = [], [], []
    for p in planned:
        if (p.run_dir / rundir.ROW_FILE).is_file():
            runs.extend(rundir.read_rows(p.run_dir / rundir.ROW_FILE))
            ranks.extend(rundir.read_rows(p.run_dir / rundir.RANKS_FILE))
            curves.extend(rundir.read_rows(p.run_dir / rundir.CURVES_FILE))
    out_dir = Path(out_dir)
    runs = annotate_rows(runs, curves, baseline)
    if ranks or (out_dir / schema.RANKS_FILE).exists():
        write_rows_atomic(out_dir / schema.RANKS_FILE, ranks, schema.RANKS_COLUMNS)
    return (write_rows_atomic(out_dir / schema.RUNS_FILE, runs, schema.RUNS_COLUMNS),
            write_rows_atomic(out_dir / schema.CURVES_FILE, curves, schema.CURVES_COLUMNS))


# ---------------------------------------------------------------- the whole suite

def run_suite(suite: Suite, out_dir: Path, *, force: bool = False, console=None,
              worker_cmd: Sequence[str] = WORKER_CMD, progress: bool = True, dispatcher=None,
              publish: bool = True, command: str | None = None) -> SuiteOutcome:
    """Run every (cell, seed) not already complete in out_dir, one worker process each, assemble, publish.

    dispatcher: None runs the workers here, one after another; a `swanbench.launch.cluster.SubmititDispatcher`
    sends each run to submitit (local or SLURM) instead. Either way the tables are assembled here.
    publish: afterwards draw the quality verdicts, figures and report (`swanbench.analysis.publish`) when
    anything ran; a pure resume changes no table, so they stay as they are.
    command: the command line recorded in OUT/command.txt (default: this process's own, when it is swanbench).
    """
    from swanbench.launch.progress import SuiteProgress
    from swanbench.terminal import make_console

    console = console or make_console(stderr=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    planned = plan(suite, out_dir, force)
    outcome = SuiteOutcome(out_dir)
    todo = [p for p in planned if not p.skip]
    outcome.skipped = [p.run.run_id for p in planned if p.skip]
    outcome.statuses = {p.run.run_id: p.previous_status for p in planned if p.skip}
    if outcome.skipped:
        console.print(f"resume: {len(outcome.skipped)} of {len(planned)} runs already complete in {out_dir}",
                      markup=False)
    prepare_data(suite, [p.run.cell for p in todo], console)
    with _sigterm_as_interrupt(), SuiteProgress(console, [p.run for p in todo], enabled=progress) as bar:
        def finished(p: PlannedRun, status: str) -> None:
            outcome.executed.append(p.run.run_id)
            outcome.statuses[p.run.run_id] = status
            bar.end_run(p.run, status, rundir.run_error(p.run_dir) if status != schema.OK else None)
            assemble(out_dir, planned, suite.baseline)  # after every run: Ctrl-C loses nothing measured

        if dispatcher is not None:  # submitit jobs: configs first, statuses as the jobs finish
            for p in todo:
                write_config(suite, p.run, p.run_dir)
            dispatcher.run(todo, finished)
        else:
            for p in todo:
                write_config(suite, p.run, p.run_dir)
                bar.start_run(p.run)
                cmd = cell_worker_cmd(p.run.cell, worker_cmd)
                finished(p, execute(p.run_dir, p.run.cell.timeout_s, bar.on_event, cmd))
    assemble(out_dir, planned, suite.baseline)
    if publish and outcome.executed:
        from swanbench.analysis.publish import publish_suite

        publish_suite(out_dir, console, baseline=suite.baseline, command=command)
    outcome.seconds = time.perf_counter() - started
    return outcome


def prepare_data(suite: Suite, cells: Sequence[Any], console) -> None:
    """Fill the token cache (`swanbench.data`: the trained tokenizer and the token ids) here, once, before
    the first run, for every local data source the runs to do use.

    Why: otherwise the first run of a suite on a fresh machine parses the corpus and trains the tokenizer
    in its own process, and the heap that leaves behind is in its peak RSS while later runs, which read
    the cache, never carry it: on the CI suite the first run (AdamW) measured 754 MiB of peak RSS against
    629 MiB with the cache warm (RSS when its meter started: 643 vs 516 MiB). Every run now starts alike.
    C4 and hub tokenizers come from the network inside the run and are left alone. A source that cannot
    give tokens (a file with no text, say) is a SuiteError before anything runs.
    """
    from swanbench.data import DataError, load_local
    from swanbench.models import get_preset

    seen = set()
    for cell in cells:
        key = (cell.data, get_preset(cell.model).vocab)
        online = cell.data.source == "c4" or (cell.data.tokenizer and not userfiles.is_file(cell.data.tokenizer))
        if online or key in seen:  # a hub tokenizer or C4: the network, inside the run
            continue
        seen.add(key)
        console.print(f"data: {cell.data.source} tokens for vocab {key[1]} (cached for every run)", markup=False)
        try:
            load_local(cell.data, key[1])
        except DataError as exc:
            raise SuiteError(f"{suite.path}: data: {exc}") from None


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's kill) behaves like Ctrl-C: the worker is killed and finished runs stay assembled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- terminal tables

def plan_table(suite: Suite, planned: Sequence[PlannedRun]):
    """The runs of a suite, one row each (for --dry-run): the axes that vary, the size of a step, the state."""
    from rich.table import Table

    cells = [p.run.cell for p in planned]
    varying = [f for f in ("dtype", "device", "seq_len", "batch_size", "grad_accum", "world_size", "parallelism",
                           "steps", "memory_budget")
               if len({getattr(c, f) for c in cells}) > 1]
    hparams = len({c.hparams for c in cells}) > 1 or any(c.hparams for c in cells)
    table = Table(title=f"suite {suite.name} ({suite.path})")
    for name in ["run_id", "optimizer", "model", *varying, "tokens/step", *(["hparams"] if hparams else []), "state"]:
        table.add_column(name, no_wrap=name in ("run_id", "optimizer", "model", "state"))
    for p, c in zip(planned, cells):
        state = f"done ({p.previous_status})" if p.skip else (f"retry ({p.previous_status})" if p.previous_status else "to run")
        row = [p.run.run_id, c.optimizer, c.model, *(str(getattr(c, f)) for f in varying), str(c.tokens_per_step)]
        if hparams:
            row.append(", ".join(f"{k}={v}" for k, v in c.hparams_dict().items()))
        table.add_row(*row, state)
    return table


def summary_table(out_dir: Path):
    """The assembled runs.csv in short: status, final eval, time and memory per run."""
    from rich.table import Table

    rows = rundir.read_rows(Path(out_dir) / schema.RUNS_FILE)
    table = Table(title=f"{Path(out_dir) / schema.RUNS_FILE} (MiB = 2^20 bytes)")
    ranks = any(int(r.get("world_size") or 1) > 1 for r in rows)  # multi-rank runs: memory is the max per rank
    for name in ("optimizer", "model", *(["ranks"] if ranks else []), "seed", "status", "eval loss", "ppl",
                 "step ms", "tok/s", "state MiB", "RSS MiB"):
        table.add_column(name, overflow="fold")
    for r in rows:
        label = f"{r.get('world_size')} {r.get('parallelism') or ''}".strip()
        table.add_row(str(r["optimizer"]), str(r["model"]), *([label] if ranks else []), str(r["seed"]),
                      str(r["status"]),
                      _fmt(r.get("final_eval_loss"), "{:.3f}"), _fmt(r.get("final_eval_ppl"), "{:.1f}"),
                      _fmt(r.get("step_ms"), "{:.0f}"), _fmt(r.get("tokens_per_s"), "{:.0f}"),
                      _fmt(r.get("optimizer_state_bytes"), "{:.2f}", 2**20),
                      _fmt(r.get("peak_rss_bytes"), "{:.0f}", 2**20))
    return table


def _fmt(value: Any, spec: str, divisor: float = 1.0) -> str:
    if value is None or value == "":
        return "-"
    try:
        return spec.format(float(value) / divisor)
    except (TypeError, ValueError):
        return str(value)
