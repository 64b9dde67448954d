"""Run a suite: plan (resume), one fresh worker process per (cell, seed), statuses, and the suite tables.

Layout of an output directory::

    OUT/runs.csv, OUT/curves.csv          assembled from the run directories after every run (atomic)
    OUT/runs/<run_id>/config.json         resolved cell + seed + suite name (written by the parent)
                      env.json            versions, device, host, git revision (worker)
                      log.txt             the worker's stderr: log lines and any traceback
                      curves.csv          eval points so far (worker, rewritten after each eval)
                      run.csv             the run's one runs.csv row; its existence marks the run complete

Statuses: "ok"; "oom" (CUDA OOM, CPU allocator failure, or memory_budget exceeded); "diverged" (non-finite
training loss); "timeout" (killed by the parent after timeout_s); "crashed" (any other failure: the
error, or the tail of log.txt, is kept in the row's `error` column). Resume skips runs whose status is
ok, oom or diverged (deterministic outcomes); timeout and crashed runs are retried; `force` re-runs all.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from swanbench.suite import Run, Suite
from swanbench.worker import (CONFIG_FILE, CURVES_FILE, ENV_FILE, EVENT_PREFIX, LOG_FILE, ROW_FILE,
                              STATUS_CRASHED, STATUS_TIMEOUT, identity_row, read_json, write_json_atomic,
                              write_row)

FINAL_STATUSES = frozenset({"ok", "oom", "diverged"})
ERROR_TAIL_CHARS = 2000
WORKER_CMD = (sys.executable, "-m", "swanbench.worker")

# Called after the suite tables are assembled, as hook(out_dir, console): figures and the report are
# drawn from the tables alone. A failing hook is reported and does not fail the suite.
POST_ASSEMBLY_HOOKS: list[Callable[[Path, Any], None]] = []


@dataclass
class PlannedRun:
    run: Run
    run_dir: Path
    previous_status: str | None  # status of an earlier attempt, None if never completed

    @property
    def skip(self) -> bool:
        return self.previous_status in FINAL_STATUSES


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


def run_status(run_dir: Path) -> str | None:
    """Status in the run's row file, or None if it has none (never ran, or was killed before writing).

    Read with the csv module, not pandas: resume checks every run and should answer at once.
    """
    import csv

    try:
        with open(run_dir / ROW_FILE, newline="") as fh:
            row = next(csv.DictReader(fh), None)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    return row.get("status") or None if row else None


def plan(suite: Suite, out_dir: Path, force: bool = False) -> list[PlannedRun]:
    """Every (cell, seed) with its run directory and, unless `force`, the status of an earlier attempt."""
    planned = []
    for run in suite.runs():
        run_dir = Path(out_dir) / "runs" / run.run_id
        planned.append(PlannedRun(run, run_dir, None if force else run_status(run_dir)))
    return planned


def write_config(suite: Suite, run: Run, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (ROW_FILE, CURVES_FILE, ENV_FILE, "memory_snapshot.pickle"):  # a re-run starts clean
        (run_dir / stale).unlink(missing_ok=True)
    for stale in run_dir.glob("rank-*.csv"):  # per-rank rows of an earlier multi-rank attempt
        stale.unlink()
    config = {"suite": suite.name, "suite_path": str(suite.path), "run_id": run.run_id,
              "cell_id": run.cell.cell_id, "seed": run.seed, "cell": run.cell.to_dict()}
    write_json_atomic(run_dir / CONFIG_FILE, config)


# ---------------------------------------------------------------- one run in a child process

def _tail(path: Path, chars: int = ERROR_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:].strip()


def _read_events(stream, on_event: Callable[[dict], None]) -> None:
    """Forward the worker's progress events (other stdout lines are ignored: logs go to stderr)."""
    for line in stream:
        if line.startswith(EVENT_PREFIX):
            try:
                on_event(json.loads(line[len(EVENT_PREFIX):]))
            except ValueError:
                continue


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGKILL if the parent dies, so a killed suite leaves no orphan."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: a killed parent may leave the worker to finish on its own


def _kill(proc: subprocess.Popen) -> None:
    """Kill the worker and anything it started (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def execute(run_dir: Path, timeout_s: float, on_event: Callable[[dict], None] = lambda e: None,
            worker_cmd: Sequence[str] = WORKER_CMD) -> str:
    """Run the worker on run_dir; enforce the timeout; make sure a row exists. Returns the run's status."""
    with open(run_dir / LOG_FILE, "w") as log:
        # A new session: Ctrl-C in the terminal reaches only the parent, which then kills the worker itself.
        proc = subprocess.Popen([*worker_cmd, str(run_dir)], stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=_die_with_parent)
        reader = threading.Thread(target=_read_events, args=(proc.stdout, on_event), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill(proc)  # no-op when it exited; on Ctrl-C or a timeout nothing is left running
        reader.join(timeout=5)
    _combine_ranks(run_dir)
    status = run_status(run_dir)
    if timed_out:
        return _record_failure(run_dir, STATUS_TIMEOUT, f"killed after timeout_s = {timeout_s:g} s")
    if status is None:
        error = _tail(run_dir / LOG_FILE) or f"worker exited with code {proc.returncode} and no output"
        return _record_failure(run_dir, STATUS_CRASHED, f"exit code {proc.returncode}: {error}")
    return status


def _combine_ranks(run_dir: Path) -> None:
    """A multi-rank run: each rank wrote rank-<r>.csv; run.csv gets the max row and one row per rank."""
    cell = (read_json(run_dir / CONFIG_FILE) or {}).get("cell", {})
    world_size = int(cell.get("world_size", 1))
    if world_size > 1:
        from swanbench.distributed import combine_rank_rows

        combine_rank_rows(run_dir, world_size)


def cell_worker_cmd(cell, worker_cmd: Sequence[str] = WORKER_CMD) -> Sequence[str]:
    """The worker command for a cell: torchrun over world_size ranks when > 1 (unless a test injects its own)."""
    if cell.world_size > 1 and tuple(worker_cmd) == WORKER_CMD:
        from swanbench.distributed import worker_command

        return worker_command(cell.world_size)
    return worker_cmd


def _record_failure(run_dir: Path, status: str, error: str) -> str:
    """The row of a run the worker could not finish: identity from config/env, the status and the error."""
    config = read_json(run_dir / CONFIG_FILE)
    row = {**identity_row(config, read_json(run_dir / ENV_FILE)), "status": status, "error": error}
    curve = read_json_rows(run_dir / CURVES_FILE)
    if curve:
        row["steps_done"] = curve[-1].get("step")
    write_row(run_dir, row)
    return status


def read_json_rows(path: Path) -> list[dict]:
    """The rows of a CSV table as dicts (empty cells None), or [] if it is missing or unreadable."""
    from swanbench.tables import TableError, concat_tables

    try:
        return concat_tables([path], [])
    except TableError:
        return []


# ---------------------------------------------------------------- the suite tables

def with_tokens_to_target(runs: list[dict], curves: list[dict], baseline: str = "adamw") -> list[dict]:
    """Runs with `tokens_to_target` (and steps, seconds, effective speedup) against the baseline's final loss.

    A suite-level column: it needs the baseline optimizer's run of the same cell and seed, so it is filled
    here, at assembly, never by a run. Empty where the suite has no such baseline or a run never got there.
    """
    if not runs:
        return runs
    import pandas as pd

    from swanbench.quality import annotate_tokens_to_target

    frame = annotate_tokens_to_target(pd.DataFrame(runs), pd.DataFrame(curves), baseline=baseline)
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def assemble(out_dir: Path, planned: Sequence[PlannedRun]) -> tuple[Path, Path]:
    """(Re)write OUT/runs.csv and OUT/curves.csv from the run directories of this suite, atomically."""
    from swanbench.tables import CURVES_COLUMNS, RUNS_COLUMNS, write_rows_atomic

    runs, curves = [], []
    for p in planned:
        if (p.run_dir / ROW_FILE).is_file():
            runs.extend(read_json_rows(p.run_dir / ROW_FILE))
            curves.extend(read_json_rows(p.run_dir / CURVES_FILE))
    out_dir = Path(out_dir)
    runs = with_tokens_to_target(runs, curves)
    return (write_rows_atomic(out_dir / "runs.csv", runs, RUNS_COLUMNS),
            write_rows_atomic(out_dir / "curves.csv", curves, CURVES_COLUMNS))


def publish(out_dir: Path, console) -> None:
    """Run the post-assembly hooks (figures, report); a failing hook is reported, the tables stay."""
    for hook in POST_ASSEMBLY_HOOKS:
        try:
            hook(Path(out_dir), console)
        except Exception as exc:  # a figure must never cost the measurements
            console.print(f"[yellow]warning:[/] {getattr(hook, '__name__', hook)} failed: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- the whole suite

def run_suite(suite: Suite, out_dir: Path, *, force: bool = False, console=None,
              worker_cmd: Sequence[str] = WORKER_CMD, progress: bool = True, dispatcher=None) -> SuiteOutcome:
    """Run every (cell, seed) not already complete in out_dir, one worker process each, then assemble.

    dispatcher: None runs the workers here, one after another; a `swanbench.executors.SubmititDispatcher`
    sends each run to submitit (local or SLURM) instead. Either way the tables are assembled here.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    planned = plan(suite, out_dir, force)
    outcome = SuiteOutcome(out_dir)
    todo = [p for p in planned if not p.skip]
    outcome.skipped = [p.run.run_id for p in planned if p.skip]
    outcome.statuses = {p.run.run_id: p.previous_status for p in planned if p.skip}
    if outcome.skipped:
        console.print(f"resume: {len(outcome.skipped)} of {len(planned)} runs already complete in {out_dir}")
    with _sigterm_as_interrupt(), _SuiteProgress(console, len(todo), enabled=progress) as bar:
        def finished(p: PlannedRun, status: str) -> None:
            outcome.executed.append(p.run.run_id)
            outcome.statuses[p.run.run_id] = status
            bar.end_run(p.run, status, _error_of(p.run_dir) if status != "ok" else None)
            assemble(out_dir, planned)  # after every run: Ctrl-C between runs loses nothing measured

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
    assemble(out_dir, planned)
    if outcome.executed:  # a pure resume changes no table, so figures and report stay as they are
        publish(out_dir, console)
    outcome.seconds = time.perf_counter() - started
    return outcome


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


def _error_of(run_dir: Path) -> str | None:
    rows = read_json_rows(run_dir / ROW_FILE)
    return str(rows[0].get("error")) if rows and rows[0].get("error") else None


class _SuiteProgress:
    """Rich progress: one bar for the suite's runs and one for the current run's steps."""

    def __init__(self, console, total_runs: int, enabled: bool = True):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = console
        self.enabled = enabled and total_runs > 0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=console, transient=False, disable=not self.enabled)
        self.suite_task = self.progress.add_task("suite", total=total_runs, info="")
        self.step_task = None
        self._lock = threading.Lock()

    def __enter__(self) -> "_SuiteProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start_run(self, run: Run) -> None:
        label = f"{run.cell.optimizer} {run.cell.model} s{run.seed}"
        with self._lock:
            if self.step_task is not None:
                self.progress.remove_task(self.step_task)
            self.step_task = self.progress.add_task(f"  {label}", total=run.cell.steps, info="starting")

    def on_event(self, event: dict) -> None:
        """Called from the reader thread for each worker event."""
        with self._lock:
            if self.step_task is None:
                return
            kind = event.get("event")
            if kind == "phase":
                self.progress.update(self.step_task, info=f"loading {event.get('phase')}")
            elif kind == "step":
                self.progress.update(self.step_task, completed=event["step"], info=f"loss {event['loss']:.3f}")
            elif kind == "eval":
                self.progress.update(self.step_task, info=f"eval loss {event['eval_loss']:.3f}")

    def end_run(self, run: Run, status: str, error: str | None) -> None:
        with self._lock:
            self.progress.advance(self.suite_task)
        from rich.markup import escape

        colour = "green" if status == "ok" else "yellow" if status in FINAL_STATUSES else "red"
        line = f"{run.run_id} {run.cell.optimizer} {run.cell.model} seed {run.seed}: [{colour}]{status}[/]"
        if error:
            line += f" ({escape(error.strip().splitlines()[-1][:200])})"
        self.console.print(line)


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

    rows = [r for r in read_json_rows(Path(out_dir) / "runs.csv")  # summary rows: not the per-rank ones
            if str(r.get("rank") or "max") == "max"]
    table = Table(title=f"{Path(out_dir) / 'runs.csv'} (MiB = 2^20 bytes)")
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
