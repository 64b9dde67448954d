"""Tuning before evaluation: the trials of a suite's [tune] table, run as ordinary runs, and their choice.

`swanbench run SUITE` on a suite with [tune] (`swanbench.suite.tune` says what the trials are and how one is
chosen) does, in `tune`:

1. `resolve`: from the trial runs already on disk, every tuning group's trials (its grid, then the edge
   rule's extensions as far as finished results reach), its choice and the hyperparameters at an edge;
2. run what is missing: each trial is an ordinary run (`swanbench.runner.run_suite`: its own process, its
   folder `OUT/tuning/runs/<run_id>/`, resume skips a finished one, a diverged or OOM trial is a final
   status, a timeout or crash is retried once per invocation), then resolve again, until nothing is left;
3. write `OUT/tuning/runs.csv` + `curves.csv` (the trials' own tables) and `OUT/tuning.csv` (one row per
   trial and seed: the optimizer, every tuned hyperparameter as a column, seed, tokens, final eval loss,
   status, chosen, at_edge, extension, budget); return the evaluation suite, each evaluation cell with its
   group's chosen values. A group with no choice (every setting failed, or a trial still unfinished) is left
   out of the evaluation and named.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from swanbench import rundir, runner, schema
from swanbench.launch import WORKER_CMD
from swanbench.suite import Cell, Suite
from swanbench.suite.tune import Choice, Trial, choose, evaluation_cell, grid_trials, score, trial_cell, value_text

TUNING_DIR = "tuning"


@dataclass
class GroupState:
    """One tuning group: its trials so far, whether all of them finished, and the choice they give."""

    group: Cell
    trials: list[Trial]
    complete: bool = False
    choice: Choice | None = None

    @property
    def chosen(self) -> dict[str, Any] | None:
        return self.choice.point if self.complete and self.choice is not None else None

    @property
    def at_edge(self) -> list[str]:
        return list(self.choice.edges) if self.chosen is not None else []


@dataclass
class Tuned:
    """What tuning gave: the evaluation suite, every group's state, the trial runs executed now, and why a
    group has no evaluation (one line each)."""

    suite: Suite
    groups: list[GroupState]
    executed: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def tuning_dir(out_dir: Path) -> Path:
    return Path(out_dir) / TUNING_DIR


def _run_id(cell: Cell, seed: int) -> str:
    return f"{cell.cell_id}-s{seed}"


def _result(tdir: Path, cell: Cell, seed: int) -> tuple[str | None, float | None]:
    """(status, final eval loss) of one trial run on disk; (None, None) if it never finished."""
    run_dir = tdir / "runs" / _run_id(cell, seed)
    status = rundir.run_status(run_dir)
    if status is None:
        return None, None
    rows = rundir.read_rows(run_dir / rundir.ROW_FILE)
    loss = rows[0].get("final_eval_loss") if rows else None
    try:
        return status, float(loss) if loss is not None else None
    except (TypeError, ValueError):
        return status, None


def resolve(suite: Suite, tdir: Path) -> list[GroupState]:
    """Every group's trials and choice from what is on disk: the grid, then the edge rule's extensions while
    all the group's trials have a final status."""
    spec = suite.tune
    states = []
    for group in suite.cells:
        state = GroupState(group, [t for t in grid_trials([group], spec)])
        dims = spec.spaces[group.optimizer]
        while True:
            results = [[_result(tdir, t.cell, s) for s in spec.seeds] for t in state.trials]
            if any(status not in schema.FINAL_STATUSES for r in results for status, _ in r):
                break  # a trial still to run (or to retry): no choice yet
            scored = [(t.values, score([loss for _, loss in r], [status for status, _ in r]))
                      for t, r in zip(state.trials, results)]
            used = sum(t.extension > 0 for t in state.trials)
            state.choice = choose(dims, scored, used, spec.extensions)
            if not state.choice.extend:
                state.complete = True
                break
            for point in state.choice.extend:
                used += 1
                state.trials.append(Trial(group, tuple(point.items()), used, trial_cell(group, point, spec.tokens)))
        states.append(state)
    return states


def _pending(states: Sequence[GroupState], seeds: Sequence[int], tdir: Path, force: bool,
             attempted: set[str]) -> list[Cell]:
    """Trial cells with a run to do now: not attempted in this invocation, and not finished (or --force)."""
    todo = []
    for state in states:
        for trial in state.trials:
            for seed in seeds:
                run_id = _run_id(trial.cell, seed)
                if run_id in attempted:
                    continue
                if force or rundir.run_status(tdir / "runs" / run_id) not in schema.FINAL_STATUSES:
                    todo.append(trial.cell)
    return list(dict.fromkeys(todo))


def tune(suite: Suite, out_dir: Path, *, force: bool = False, console=None, worker_cmd: Sequence[str] = WORKER_CMD,
         progress: bool = True, dispatcher=None) -> Tuned:
    """Run the suite's tuning trials that are not done, choose, write tuning.csv; the evaluation suite back."""
    spec = suite.tune
    tdir = tuning_dir(out_dir)
    attempted: set[str] = set()
    executed: list[str] = []
    while True:
        states = resolve(suite, tdir)
        todo = _pending(states, spec.seeds, tdir, force, attempted)
        if not todo:
            break
        if console is not None:
            console.print(f"tuning: {len(todo)} trial setting(s) x {len(spec.seeds)} seed(s) to run in {tdir}",
                          markup=False)
        trials = dataclasses.replace(suite, cells=tuple(todo), seeds=spec.seeds, tune=None)
        outcome = runner.run_suite(trials, tdir, force=force, console=console, worker_cmd=worker_cmd,
                                   progress=progress, dispatcher=dispatcher, publish=False)
        executed += outcome.executed
        attempted |= {_run_id(c, s) for c in todo for s in spec.seeds}
    every = [t.cell for s in states for t in s.trials]
    all_trials = dataclasses.replace(suite, cells=tuple(dict.fromkeys(every)), seeds=spec.seeds, tune=None)
    runner.assemble(tdir, runner.plan(all_trials, tdir), suite.baseline)
    write_tuning_table(Path(out_dir) / schema.TUNING_FILE, suite, states, tdir)
    cells, left_out = [], []
    for state in states:
        if state.chosen is not None:
            cells.append(evaluation_cell(state.group, state.chosen))
        else:
            left_out.append(_why_left_out(state))
    return Tuned(dataclasses.replace(suite, cells=tuple(dict.fromkeys(cells))), states, executed, left_out)


def _why_left_out(state: GroupState) -> str:
    label = f"{state.group.optimizer} on {state.group.model} (group {state.group.cell_id})"
    if not state.complete:
        return f"{label}: a tuning trial did not finish (timeout or crash); run again to retry it"
    return f"{label}: no tuning trial finished ok with a finite loss (all failed or diverged); not evaluated"


# ---------------------------------------------------------------------------------------------- tuning.csv

def tuning_rows(suite: Suite, states: Sequence[GroupState], tdir: Path) -> list[dict[str, Any]]:
    """One row per trial and tuning seed (schema.TUNING_COLUMNS, then the tuned hyperparameters)."""
    spec = suite.tune
    rows = []
    for state in states:
        chosen = state.chosen
        eval_id = evaluation_cell(state.group, chosen).cell_id if chosen is not None else None
        for trial in state.trials:
            is_chosen = chosen is not None and trial.values == chosen
            for seed in spec.seeds:
                status, loss = _result(tdir, trial.cell, seed)
                rows.append({
                    "optimizer": trial.group.optimizer, "trial_seed": seed,
                    "tokens": trial.cell.steps * trial.cell.tokens_per_step,
                    "final_eval_loss": loss if loss is not None and math.isfinite(loss) else None,
                    "status": status, "chosen": is_chosen, "at_edge": is_chosen and bool(state.at_edge),
                    "edges": ",".join(state.at_edge) if is_chosen and state.at_edge else None,
                    "model": trial.group.model, "group_id": trial.group.cell_id,
                    "run_id": _run_id(trial.cell, seed), "extension": trial.extension, "budget": spec.budget,
                    "extensions_allowed": spec.extensions, "eval_cell_id": eval_id,
                    "tuned": ",".join(spec.tuned(trial.group.optimizer)),
                    **{k: _cell_value(v) for k, v in trial.point},
                })
    return rows


def _cell_value(value: Any) -> Any:
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else value


def write_tuning_table(path: Path, suite: Suite, states: Sequence[GroupState], tdir: Path) -> Path:
    from swanbench.tables import write_rows_atomic

    return write_rows_atomic(path, tuning_rows(suite, states, tdir), schema.TUNING_COLUMNS)


# ---------------------------------------------------------------------------------------------- dry run

def plan_tables(suite: Suite, out_dir: Path, force: bool = False) -> tuple[Any, Any, str]:
    """For --dry-run: the trials (with their tokens and state), the evaluation runs, and a one-paragraph summary."""
    from rich.table import Table

    spec = suite.tune
    tdir = tuning_dir(out_dir)
    states = resolve(suite, tdir)
    trials = Table(title=f"tuning trials of {suite.name} (budget {spec.budget} per optimizer, "
                         f"up to {spec.extensions} extension point(s) per group)")
    for name in ("optimizer", "model", "group", "setting", "extension", "tokens", "seeds", "state"):
        trials.add_column(name, no_wrap=name in ("optimizer", "group", "state"))
    n_trials = 0
    for state in states:
        for t in state.trials:
            done = [rundir.run_status(tdir / "runs" / _run_id(t.cell, s)) for s in spec.seeds]
            finished = sum(d in schema.FINAL_STATUSES for d in done) if not force else 0
            n_trials += len(spec.seeds)
            trials.add_row(t.group.optimizer, t.group.model, t.group.cell_id, _setting(t.values),
                           str(t.extension) if t.extension else "grid", f"{t.cell.steps * t.cell.tokens_per_step:,}",
                           ", ".join(map(str, spec.seeds)), f"{finished}/{len(spec.seeds)} done" if finished else "to run")
    runs = Table(title=f"evaluation runs of {suite.name} (seeds {', '.join(map(str, suite.seeds))})")
    for name in ("run_id", "optimizer", "model", "hyperparameters", "tokens", "state"):
        runs.add_column(name, no_wrap=name in ("run_id", "optimizer", "state"))
    for state in states:
        cell = evaluation_cell(state.group, state.chosen) if state.chosen is not None else None
        tuned = (_setting(state.chosen) + (f" (at edge: {', '.join(state.at_edge)})" if state.at_edge else "")
                 if state.chosen is not None else f"tuned: {', '.join(spec.tuned(state.group.optimizer))}")
        for seed in suite.seeds:
            run_id = _run_id(cell, seed) if cell is not None else "(after tuning)"
            status = rundir.run_status(Path(out_dir) / "runs" / run_id) if cell is not None and not force else None
            runs.add_row(run_id, state.group.optimizer, state.group.model, tuned,
                         f"{state.group.steps * state.group.tokens_per_step:,}",
                         f"done ({status})" if status in schema.FINAL_STATUSES else "to run")
    tokens = sorted({t.cell.steps * t.cell.tokens_per_step for s in states for t in s.trials})
    evals = sorted({s.group.steps * s.group.tokens_per_step for s in states})
    summary = (f"{n_trials} tuning trials so far ({len(states)} group(s) x {spec.budget} grid trials; up to "
               f"{spec.extensions} more setting(s) per group by the edge rule), {_tokens(tokens)} training tokens "
               f"each; then {len(states) * len(suite.seeds)} evaluation runs ({len(states)} cells x "
               f"{len(suite.seeds)} seeds), {_tokens(evals)} training tokens each; output {out_dir}")
    return trials, runs, summary


def _setting(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {value_text(v)}" for k, v in values.items())


def _tokens(values: Sequence[int]) -> str:
    return " / ".join(f"{v:,}" for v in values)
