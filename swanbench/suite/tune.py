"""The [tune] table of a train suite: the search space per optimizer, one budget for all, and the edge rule.

A suite with [tune] tunes every optimizer it runs before it evaluates them (`swanbench.tuning` runs the
trials; this module only says what they are and how one is chosen, without torch)::

    [tune]
    seeds = [100]               # tuning seeds: disjoint from the evaluation seeds ([matrix] seed)
    tokens = 81920              # training tokens per trial (default: the cell's own); a shorter trial keeps
                                # the schedule's shape (warm-up fraction, cosine to lr_min_ratio) over its steps
    trials = 9                  # optional: the budget stated; every optimizer's grid must have this many trials
    extensions = 2              # points each tuning group may add beyond an edge of its grid (the edge rule)
    select = "final_eval_loss"  # the selection rule (the only one)
    [tune.space.adamw]
    lr = {min = 1e-3, max = 2.56e-2, points = 9}   # a log grid (values rounded to 4 significant digits)
    [tune.space.swan]
    lr = [0.03, 0.1, 0.3]                           # or the values themselves
    adamw_lr = [0.01, 0.03, 0.09]

The rules, checked when the suite loads (one-line errors naming the key):
- every optimizer the suite runs has a space, and every space tunes at least `lr`;
- the budget, grid points x tuning seeds, is the same for every optimizer;
- tuning seeds are disjoint from the evaluation seeds (the seeds reported were not used to choose);
- a tuned hyperparameter is not also set in [optimizers.X] or a [matrix] axis (tuning chooses it).

Selection: per tuning group (an evaluation cell before tuning: optimizer, model, every other axis and the
hyperparameters not tuned), the setting with the lowest mean final token-weighted eval loss over the tuning
seeds; a setting with a failed or diverged seed scores +inf (a diverged trial is data, not an error).
**Edge rule**: a chosen value at the smallest or largest value tried in its hyperparameter (one that has at
least two positive values: a log grid) is extended one step beyond that edge (the ratio of the two outermost
values), the other hyperparameters held at their chosen values, and selection is redone; each group may add
`extensions` points, the same allowance for every optimizer, and every added point is recorded. A value
still at an edge when the allowance is spent is marked `at_edge`, and verdicts say so.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from swanbench import schema
from swanbench.hints import did_you_mean
from swanbench.suite.spec import Cell, _freeze_hparams, _is_int, check_keys, fail

TUNE_KEYS = ("space", "seeds", "tokens", "trials", "extensions", "select")
SELECT_RULES = ("final_eval_loss",)
DEFAULT_EXTENSIONS = 2
SIGNIFICANT = 4  # digits a log-grid or extension value is rounded to (readable tables, stable cell ids)
SELECT_TEXT = ("lowest mean final token-weighted eval loss over the tuning seeds; a setting with a failed or "
               "diverged seed scores +inf")
EDGE_TEXT = ("a chosen value at the edge of its log grid is extended one grid step beyond it, the others held "
             "at their chosen values, up to the allowance; one still at an edge is marked at_edge")


@dataclass(frozen=True)
class Dimension:
    """One tuned hyperparameter: its grid values (ascending when numbers) and whether the edge rule applies."""

    name: str
    values: tuple
    extendable: bool  # >= 2 positive numbers: a log grid that can grow one step beyond either edge

    def text(self) -> str:
        shown = ", ".join(value_text(v) for v in self.values)
        return f"{self.name} in [{shown}]" + ("" if self.extendable else " (fixed choices)")


@dataclass(frozen=True)
class TuneSpec:
    """A validated [tune] table. `budget` = grid trials per optimizer (grid points x tuning seeds)."""

    spaces: Mapping[str, tuple[Dimension, ...]]
    seeds: tuple[int, ...]
    tokens: int | None
    budget: int
    extensions: int = DEFAULT_EXTENSIONS
    select: str = "final_eval_loss"

    def tuned(self, optimizer: str) -> tuple[str, ...]:
        return tuple(d.name for d in self.spaces.get(optimizer, ()))

    def grid_points(self, optimizer: str) -> list[dict[str, Any]]:
        """Every point of the optimizer's grid, in file order (the last hyperparameter varies fastest)."""
        dims = self.spaces[optimizer]
        return [dict(zip((d.name for d in dims), combo)) for combo in itertools.product(*(d.values for d in dims))]


def value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def round_value(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}")


# ---------------------------------------------------------------------------------------------- loading

def load_tune(path: Path, table: Any, cells: Sequence[Cell], seeds: Sequence[int], opt_tables: Mapping[str, dict],
              matrix: Mapping[str, Any]) -> TuneSpec:
    """Validate the raw [tune] table against the suite's cells and seeds (pure: no torch, no registry)."""
    if not isinstance(table, dict):
        raise fail(path, "tune", "expected a table [tune]")
    check_keys(path, "tune.", table, TUNE_KEYS)
    spaces = _load_spaces(path, table.get("space"), sorted({c.optimizer for c in cells}))
    _check_not_set(path, spaces, opt_tables, matrix)
    tune_seeds = _load_seeds(path, table.get("seeds"), seeds)
    tokens = _load_tokens(path, table.get("tokens"), cells)
    budget = _check_budget(path, spaces, len(tune_seeds), table.get("trials"))
    extensions = table.get("extensions", DEFAULT_EXTENSIONS)
    if not _is_int(extensions) or extensions < 0:
        raise fail(path, "tune.extensions", f"expected an integer >= 0, got {extensions!r}")
    select = table.get("select", SELECT_RULES[0])
    if select not in SELECT_RULES:
        raise fail(path, "tune.select", f"unknown rule {select!r}{did_you_mean(str(select), SELECT_RULES)} "
                   f"(known: {', '.join(SELECT_RULES)})")
    return TuneSpec(spaces, tune_seeds, tokens, budget, extensions, select)


def _load_spaces(path: Path, raw: Any, running: list[str]) -> dict[str, tuple[Dimension, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise fail(path, "tune.space", "expected [tune.space.<optimizer>] tables, one per optimizer the suite runs")
    for name in raw:
        if name not in running:
            raise fail(path, f"tune.space.{name}", f"optimizer {name!r} does not run in this suite"
                       f"{did_you_mean(name, running)} (runs: {', '.join(running)})")
    missing = [o for o in running if o not in raw]
    if missing:
        raise fail(path, "tune.space", f"no search space for {missing[0]!r}, which runs in this suite: every "
                   "optimizer is tuned, with the same budget")
    spaces = {}
    for name in running:
        space = raw[name]
        where = f"tune.space.{name}"
        if not isinstance(space, dict) or not space:
            raise fail(path, where, "expected a table of hyperparameter = values")
        if "lr" not in space:
            raise fail(path, where, "no lr: every search space tunes at least lr")
        spaces[name] = tuple(_dimension(path, f"{where}.{key}", key, value) for key, value in space.items())
    return spaces


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dimension(path: Path, where: str, name: str, raw: Any) -> Dimension:
    """`[v1, v2, ...]` (numbers, or lists such as betas pairs) or `{min, max, points}` (a log grid)."""
    if isinstance(raw, dict):
        check_keys(path, f"{where}.", raw, ("min", "max", "points"))
        low, high, points = raw.get("min"), raw.get("max"), raw.get("points")
        if not (_number(low) and _number(high) and 0 < low < high):
            raise fail(path, where, f"a log grid needs 0 < min < max, got min={low!r}, max={high!r}")
        if not _is_int(points) or points < 2:
            raise fail(path, f"{where}.points", f"expected an integer >= 2, got {points!r}")
        values = [round_value(low * (high / low) ** (k / (points - 1))) for k in range(points)]
        if len(set(values)) != points:
            raise fail(path, where, f"{points} points between {low:g} and {high:g} are not distinct at "
                       f"{SIGNIFICANT} significant digits")
        return Dimension(name, tuple(values), True)
    if not isinstance(raw, list) or not raw:
        raise fail(path, where, f"expected a non-empty list of values or {{min, max, points}}, got {raw!r}")
    if len({json.dumps(v, sort_keys=True) for v in raw}) != len(raw):
        raise fail(path, where, "repeated values")
    if all(_number(v) for v in raw):
        values = tuple(sorted(raw))
        return Dimension(name, values, len(values) >= 2 and values[0] > 0)
    if any(_number(v) for v in raw) or any(isinstance(v, bool) for v in raw):
        raise fail(path, where, f"mixed values {raw!r}: give numbers, or lists such as betas pairs")
    return Dimension(name, tuple(tuple(v) if isinstance(v, list) else v for v in raw), False)


def _check_not_set(path: Path, spaces: Mapping[str, tuple[Dimension, ...]], opt_tables: Mapping[str, dict],
                   matrix: Mapping[str, Any]) -> None:
    for name, dims in spaces.items():
        for dim in dims:
            if dim.name in opt_tables.get(name, {}):
                raise fail(path, f"optimizers.{name}.{dim.name}", f"tuned in tune.space.{name}: a tuned "
                           "hyperparameter is chosen by tuning, not set")
            if f"hparams.{dim.name}" in matrix:
                raise fail(path, f"matrix.hparams.{dim.name}", f"tuned in tune.space.{name}: a tuned "
                           "hyperparameter is chosen by tuning, not a matrix axis")


def _load_seeds(path: Path, raw: Any, eval_seeds: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw or not all(_is_int(s) and s >= 0 for s in raw):
        raise fail(path, "tune.seeds", f"expected a non-empty list of integers >= 0, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise fail(path, "tune.seeds", "repeated seeds")
    shared = sorted(set(raw) & set(eval_seeds))
    if shared:
        raise fail(path, "tune.seeds", f"seed {shared[0]} is also an evaluation seed: tuning seeds must be "
                   f"disjoint from the evaluation seeds ({', '.join(map(str, eval_seeds))})")
    return tuple(raw)


def _load_tokens(path: Path, raw: Any, cells: Sequence[Cell]) -> int | None:
    if raw is None:
        return None
    if not _is_int(raw) or raw < 1:
        raise fail(path, "tune.tokens", f"expected training tokens per trial (an integer >= 1), got {raw!r}")
    for cell in cells:
        where = f"({cell.optimizer} on {cell.model})"
        if raw % cell.tokens_per_step:
            raise fail(path, "tune.tokens", f"{raw} is not a multiple of tokens_per_step {cell.tokens_per_step} "
                       f"{where}")
        if raw > cell.steps * cell.tokens_per_step:
            raise fail(path, "tune.tokens", f"{raw} is more than the evaluation's {cell.steps * cell.tokens_per_step} "
                       f"tokens {where}: trials are at most as long as the runs they choose for")
        if raw // cell.tokens_per_step <= cell.warmup_steps:
            raise fail(path, "tune.tokens", f"{raw // cell.tokens_per_step} trial steps leave no timed step after "
                       f"warmup_steps = {cell.warmup_steps} {where}")
    return raw


def _check_budget(path: Path, spaces: Mapping[str, tuple[Dimension, ...]], n_seeds: int, stated: Any) -> int:
    sizes = {name: math.prod(len(d.values) for d in dims) * n_seeds for name, dims in spaces.items()}
    if stated is not None:
        if not _is_int(stated) or stated < 1:
            raise fail(path, "tune.trials", f"expected an integer >= 1, got {stated!r}")
        for name, size in sizes.items():
            if size != stated:
                raise fail(path, f"tune.space.{name}", f"{_size_text(spaces[name], n_seeds)} = {size} trials, but "
                           f"tune.trials = {stated}: every optimizer gets the stated budget")
    first = next(iter(sizes))
    for name, size in sizes.items():
        if size != sizes[first]:
            raise fail(path, f"tune.space.{name}", f"{_size_text(spaces[name], n_seeds)} = {size} trials, but "
                       f"tune.space.{first} has {sizes[first]}: the budget must be the same for every optimizer")
    return sizes[first]


def _size_text(dims: Sequence[Dimension], n_seeds: int) -> str:
    return " x ".join([f"{d.name} {len(d.values)}" for d in dims] + [f"{n_seeds} seed(s)"])


# ---------------------------------------------------------------------------------------------- trials

@dataclass(frozen=True)
class Trial:
    """One setting of one tuning group, run once per tuning seed: `cell` is what runs."""

    group: Cell           # the evaluation cell before tuning
    point: tuple          # ((name, value), ...) in the space's order
    extension: int        # 0: a grid point; k: the k-th point added by the edge rule
    cell: Cell

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.point)


def trial_cell(group: Cell, point: Mapping[str, Any], tokens: int | None) -> Cell:
    """The group's cell with the point's hyperparameters, `tokens` long (its own length if None), and evals
    only at 0 and at the end (selection reads the final eval)."""
    steps = tokens // group.tokens_per_step if tokens is not None else group.steps
    hparams = {**group.hparams_dict(), **point}
    return dataclasses.replace(group, hparams=_freeze_hparams(hparams), steps=steps,
                               eval_every_tokens=steps * group.tokens_per_step)


def grid_trials(cells: Iterable[Cell], spec: TuneSpec) -> list[Trial]:
    """The grid trials of every tuning group (one group per evaluation cell), in suite order."""
    trials = []
    for cell in cells:
        for point in spec.grid_points(cell.optimizer):
            trials.append(Trial(cell, tuple(point.items()), 0, trial_cell(cell, point, spec.tokens)))
    return trials


def evaluation_cell(group: Cell, chosen: Mapping[str, Any]) -> Cell:
    """The evaluation cell with the chosen hyperparameters (its length, evals and everything else unchanged)."""
    return dataclasses.replace(group, hparams=_freeze_hparams({**group.hparams_dict(), **chosen}))


# ---------------------------------------------------------------------------------------------- selection

@dataclass
class Choice:
    """The outcome of selection in one group: the chosen point, its score and the hyperparameters at an edge."""

    point: dict[str, Any] | None
    score: float
    edges: list[str] = field(default_factory=list)  # hyperparameters whose chosen value is at an edge
    extend: list[dict[str, Any]] = field(default_factory=list)  # points the edge rule adds next


def choose(dims: Sequence[Dimension], scored: Sequence[tuple[Mapping[str, Any], float]], used: int,
           allowed: int) -> Choice:
    """Selection and the edge rule over the points tried so far, (point, score) in trial order.

    The lowest finite score wins (the first on a tie); no finite score: no choice. Edges are judged against
    the values tried in each extendable hyperparameter; `extend` lists the next points beyond them while the
    group has used fewer than `allowed` extensions (one point per hyperparameter at an edge).
    """
    finite = [(score, i) for i, (_, score) in enumerate(scored) if math.isfinite(score)]
    if not finite:
        return Choice(None, math.inf)
    best_score, best = min(finite)
    point = dict(scored[best][0])
    edges, extend = [], []
    for dim in dims:
        if not dim.extendable:
            continue
        tried = sorted({p[dim.name] for p, _ in scored})
        value = point[dim.name]
        if value not in (tried[0], tried[-1]):
            continue
        edges.append(dim.name)
        if used + len(extend) >= allowed:
            continue
        if value == tried[-1]:
            step = tried[-1] / tried[-2]
        else:
            step = tried[0] / tried[1]
        extend.append({**point, dim.name: round_value(value * step)})
    return Choice(point, best_score, edges, extend)


def score(losses: Sequence[float | None], statuses: Sequence[str]) -> float:
    """Mean final eval loss over the tuning seeds; +inf if any seed did not finish ok with a finite loss."""
    values = []
    for loss, status in zip(losses, statuses):
        if status != schema.OK or loss is None or not math.isfinite(float(loss)):
            return math.inf
        values.append(float(loss))
    return sum(values) / len(values) if values else math.inf


def space_text(dims: Sequence[Dimension]) -> str:
    return "; ".join(d.text() for d in dims)


def check_tune_runtime(suite: Any) -> None:
    """Every value of every space is a hyperparameter its optimizer accepts (asks the registry: imports torch)."""
    import optimizers

    spec: TuneSpec | None = suite.tune
    if spec is None:
        return
    for cell in {c.optimizer: c for c in suite.cells}.values():
        for dim in spec.spaces[cell.optimizer]:
            for value in dim.values:
                try:
                    optimizers.resolve_hparams(cell.optimizer, **{**cell.hparams_dict(), dim.name: value})
                except (ValueError, TypeError) as exc:
                    raise fail(suite.path, f"tune.space.{cell.optimizer}.{dim.name}",
                               " ".join(str(exc).split())) from None
