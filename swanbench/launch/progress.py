"""Progress of a suite while it runs: live bars in a terminal, plain lines in a pipe or CI log, and a real ETA.

The ETA is measured, not guessed: once a run has finished, each run still to come is predicted as the
start-up its predecessors took (process start to first training step: imports, data, model, first eval)
plus its own steps times their seconds per step (evals included), from finished runs of the same optimizer
when there are any, else from all finished runs. The run in progress uses its own steps so far. Before the
first run finishes the ETA says so ("after the first run") instead of showing a number it does not have.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

from swanbench import schema

# A plain progress line at most this often within a run (besides one per eval point), seconds.
PLAIN_EVERY_S = 30.0


@dataclass
class _Timing:
    """One finished run: seconds to its first step, seconds per step after that, its optimizer."""

    optimizer: str
    startup_s: float
    per_step_s: float | None


@dataclass
class EtaClock:
    """Start-up and seconds per step of finished runs, and the run in progress; predicts what is left."""

    pending: list = field(default_factory=list)  # runs not started yet (swanbench.suite.Run)
    finished: list[_Timing] = field(default_factory=list)
    current: object = None
    started_at: float = 0.0
    first_step_at: float | None = None
    first_step: int = 0
    last_step: int = 0
    last_step_at: float | None = None

    def start(self, run, now: float | None = None) -> None:
        if run in self.pending:
            self.pending.remove(run)
        self.current, self.started_at = run, time.perf_counter() if now is None else now
        self.first_step_at, self.first_step, self.last_step, self.last_step_at = None, 0, 0, None

    def step(self, step: int, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if self.first_step_at is None:
            self.first_step_at = now
            self.first_step = step
        self.last_step, self.last_step_at = step, now

    def end(self, now: float | None = None) -> float:
        """Close the run in progress; returns its wall seconds."""
        now = time.perf_counter() if now is None else now
        wall = now - self.started_at
        if self.current is not None:
            startup = (self.first_step_at or now) - self.started_at
            per_step = None
            if self.first_step_at is not None and self.last_step > self.first_step:
                per_step = (now - self.first_step_at) / (self.current.cell.steps - self.first_step)
            self.finished.append(_Timing(self.current.cell.optimizer, startup, per_step))
        self.current = None
        return wall

    # -- prediction

    def _typical(self, optimizer: str) -> tuple[float, float | None]:
        same = [t for t in self.finished if t.optimizer == optimizer] or self.finished
        startup = statistics.fmean(t.startup_s for t in same)
        rates = [t.per_step_s for t in same if t.per_step_s is not None]
        return startup, statistics.fmean(rates) if rates else None

    def predict(self, run) -> float | None:
        """Seconds a run not started yet will take, or None before any run finished."""
        if not self.finished:
            return None
        startup, per_step = self._typical(run.cell.optimizer)
        return startup + (per_step or 0.0) * run.cell.steps

    def current_left(self, now: float | None = None) -> float | None:
        """Seconds the run in progress still needs: from its own step rate once it has two step events."""
        run = self.current
        if run is None:
            return 0.0
        now = time.perf_counter() if now is None else now
        if self.first_step_at is not None and self.last_step > self.first_step and self.last_step_at:
            rate = (self.last_step_at - self.first_step_at) / (self.last_step - self.first_step)
            return max(run.cell.steps - self.last_step, 0) * rate
        predicted = self.predict(run)
        return None if predicted is None else max(predicted - (now - self.started_at), 0.0)

    def suite_left(self, now: float | None = None) -> float | None:
        """Seconds until the suite is done, or None while no run has finished (nothing measured yet)."""
        if not self.finished:
            return None
        current = self.current_left(now)
        queued = [self.predict(r) for r in self.pending]
        if current is None or any(q is None for q in queued):
            return None
        return current + sum(queued)


def clock_text(seconds: float | None) -> str:
    """`1:05:09`, `4:07`, or `?` for an unknown duration."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eta_text(clock: EtaClock) -> str:
    left = clock.suite_left()
    return "ETA after the first run" if left is None and not clock.finished else f"ETA {clock_text(left)}"


def run_label(run) -> str:
    return f"{run.cell.optimizer} {run.cell.model} seed {run.seed}"


def end_line(run, status: str, error: str | None, wall: float | None, markup: bool) -> str:
    """`<run_id> adamw nano seed 0: ok in 0:45` (the last line of the error when it failed)."""
    text = f"{status}"
    if markup:
        colour = "green" if status == schema.OK else "yellow" if status in schema.FINAL_STATUSES else "red"
        text = f"[{colour}]{status}[/]"
    line = f"{run.run_id} {run_label(run)}: {text}" + (f" in {clock_text(wall)}" if wall is not None else "")
    if error:
        last = error.strip().splitlines()[-1][:200]
        if markup:
            from rich.markup import escape

            last = escape(last)
        line += f" ({last})"
    return line


class SuiteProgress:
    """The suite's progress, drawn as Rich bars (a terminal) or printed as plain lines (a pipe, a CI log)."""

    def __init__(self, console, runs: list, *, enabled: bool = True, live: bool | None = None):
        from swanbench.terminal import is_terminal

        self.console = console
        self.total = len(runs)
        self.enabled = enabled and self.total > 0
        self.live = is_terminal(console) if live is None else live
        self.clock = EtaClock(pending=list(runs))
        self.done = 0
        self._lock = threading.Lock()
        self._last_line = 0.0
        self.progress = None
        if self.enabled and self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                                     TextColumn("{task.fields[info]}"), console=console, transient=False)
            self.suite_task = self.progress.add_task("suite", total=self.total, info="", eta=eta_text(self.clock))
        self.step_task = None

    def __enter__(self) -> "SuiteProgress":
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _say(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, markup=self.live, highlight=False)
            self._last_line = time.perf_counter()

    def start_run(self, run) -> None:
        with self._lock:
            self.clock.start(run)
            if self.progress is not None:
                if self.step_task is not None:
                    self.progress.remove_task(self.step_task)
                self.step_task = self.progress.add_task(f"  {run_label(run)}", total=run.cell.steps,
                                                        info="starting", eta="")
                self.progress.update(self.suite_task, eta=eta_text(self.clock))
            else:
                self._say(f"[{self.done + 1}/{self.total}] {run.run_id} {run_label(run)}: starting "
                          f"({run.cell.steps} steps; suite {eta_text(self.clock)})")

    def on_event(self, event: dict) -> None:
        """Called from the reader thread for each worker event."""
        with self._lock:
            run = self.clock.current
            if run is None:
                return
            kind = event.get("event")
            if kind == "step":
                self.clock.step(int(event["step"]))
            if self.progress is not None:
                self._live_event(kind, event)
            else:
                self._plain_event(run, kind, event)

    def _live_event(self, kind: str | None, event: dict) -> None:
        if self.step_task is None:
            return
        if kind == "phase":
            self.progress.update(self.step_task, info=f"loading {event.get('phase')}")
        elif kind == "step":
            self.progress.update(self.step_task, completed=event["step"], info=f"loss {event['loss']:.3f}",
                                 eta=f"run {clock_text(self.clock.current_left())}")
        elif kind == "eval":
            self.progress.update(self.step_task, info=f"eval loss {event['eval_loss']:.3f}")
        self.progress.update(self.suite_task, eta=eta_text(self.clock))

    def _plain_event(self, run, kind: str | None, event: dict) -> None:
        elapsed = time.perf_counter() - self.clock.started_at
        where = f"  {run_label(run)}: step {self.clock.last_step}/{run.cell.steps}, {clock_text(elapsed)} elapsed"
        if kind == "eval" and event.get("step"):
            self._say(f"{where}, eval loss {event['eval_loss']:.3f}; run ETA {clock_text(self.clock.current_left())}"
                      f", suite {eta_text(self.clock)}")
        elif kind == "step" and time.perf_counter() - self._last_line >= PLAIN_EVERY_S:
            self._say(f"{where}, loss {event['loss']:.3f}; run ETA {clock_text(self.clock.current_left())}")

    def end_run(self, run, status: str, error: str | None) -> None:
        with self._lock:
            # A dispatcher (submitit) reports runs it started elsewhere: no duration is known here.
            wall = self.clock.end() if self.clock.current is run else None
            if run in self.clock.pending:
                self.clock.pending.remove(run)
            self.done += 1
            if self.progress is not None:
                self.progress.advance(self.suite_task)
                self.progress.update(self.suite_task, eta=eta_text(self.clock))
        self._say(end_line(run, status, error, wall, markup=self.live))
