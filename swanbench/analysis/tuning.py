"""tuning.csv for analysis: how each optimizer was tuned, whether a comparison was fair, the report's section.

- `read_tuning(dir)`: the suite's tuning.csv (None when the suite had no [tune]);
- `tuning_by_cell(tuning)`: per evaluation cell (`eval_cell_id`) a `Tuning`: the budget (grid trials), the
  extensions allowed and used, trials run, tokens per trial, tuning seeds, chosen values and the
  hyperparameters whose chosen value sits at an edge of what was tried;
- `fairness(a, ta, b, tb)`: what stops a verdict between a and b from claiming "better" or "sooner": unequal
  tuning budgets (one side tuned and the other not, or other trials, allowance or trial length) and a chosen
  value at an edge on either side (`swanbench.analysis.quality` applies it to every verdict);
- `tuning_section(dir)`: the report's "How each optimizer was tuned" (markdown), from tuning.csv and
  verdicts.csv alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from swanbench.schema import OK, TUNING_FILE, VERDICTS_FILE
from swanbench.tables import read_table

REQUIRED = ("optimizer", "trial_seed", "tokens", "final_eval_loss", "status", "chosen", "eval_cell_id", "tuned")
UNTUNED = "untuned (hyperparameters set by hand)"


@dataclass(frozen=True)
class Tuning:
    """How one evaluation cell's hyperparameters were chosen (from its tuning group's rows of tuning.csv)."""

    optimizer: str
    budget: int            # grid trials (settings x seeds), the same for every optimizer of the suite
    allowed: int           # extension points the edge rule may add
    used: int              # extension points it added
    trials: int            # trial runs done (settings x seeds, extensions included)
    tokens: int            # training tokens per trial
    seeds: tuple[int, ...]
    chosen: tuple          # ((hyperparameter, value), ...)
    edges: tuple[str, ...]  # hyperparameters whose chosen value is at an edge

    def text(self) -> str:
        return (f"{self.budget} grid trials + {self.used} of {self.allowed} extension(s), "
                f"{self.tokens:,} tokens each")

    def key(self) -> tuple:
        """What must be equal for two optimizers to have had the same budget."""
        return self.budget, self.allowed, self.tokens, len(self.seeds)


def read_tuning(results_dir: Path) -> pd.DataFrame | None:
    path = Path(results_dir) / TUNING_FILE
    return read_table(path, required=REQUIRED) if path.is_file() else None


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _values(value: Any) -> Any:
    """A tuning.csv cell as the value that ran: numbers as they are, a JSON list (betas) as a tuple."""
    if isinstance(value, str) and value.startswith("["):
        return tuple(json.loads(value))
    return value


def tuned_names(rows: pd.DataFrame) -> list[str]:
    names = str(rows["tuned"].dropna().iloc[0]) if rows["tuned"].notna().any() else ""
    return [n for n in names.split(",") if n]


def tuning_by_cell(tuning: pd.DataFrame | None) -> dict[str, Tuning]:
    """eval_cell_id -> Tuning, for every tuning group that chose."""
    out: dict[str, Tuning] = {}
    if tuning is None or tuning.empty:
        return out
    for cell_id, rows in tuning.dropna(subset=["eval_cell_id"]).groupby("eval_cell_id", sort=False):
        chosen = rows[rows["chosen"].map(_true)]
        names = tuned_names(rows)
        point = tuple((n, _values(chosen[n].iloc[0])) for n in names if n in chosen.columns) if len(chosen) else ()
        edges = ()
        if len(chosen) and "edges" in chosen.columns and chosen["edges"].notna().any():
            edges = tuple(e for e in str(chosen["edges"].dropna().iloc[0]).split(",") if e)
        out[str(cell_id)] = Tuning(
            optimizer=str(rows["optimizer"].iloc[0]), budget=int(rows["budget"].iloc[0]),
            allowed=int(rows["extensions_allowed"].iloc[0]), used=int(pd.to_numeric(rows["extension"]).max()),
            trials=len(rows), tokens=int(rows["tokens"].iloc[0]),
            seeds=tuple(sorted(int(s) for s in rows["trial_seed"].unique())), chosen=point, edges=edges)
    return out


def tuning_of_cells(by_cell: dict[str, Tuning], cell_ids: Iterable[Any]) -> Tuning | None:
    """The tuning of the first of these evaluation cells that was tuned (None: set by hand)."""
    for cell_id in cell_ids:
        if str(cell_id) in by_cell:
            return by_cell[str(cell_id)]
    return None


def budget_text(tuning: Tuning | None) -> str:
    return tuning.text() if tuning is not None else UNTUNED


def fairness(a: str, ta: Tuning | None, b: str, tb: Tuning | None) -> list[str]:
    """Why a verdict between a and b may not claim better or sooner (empty: it may)."""
    problems = []
    if (ta is None) != (tb is None) or (ta is not None and tb is not None and ta.key() != tb.key()):
        problems.append(f"unequal tuning budgets ({a}: {budget_text(ta)}; {b}: {budget_text(tb)})")
    for name, tuning in ((a, ta), (b, tb)):
        if tuning is not None and tuning.edges:
            problems.append(f"{name}'s chosen {', '.join(tuning.edges)} at the edge of its grid")
    return problems


def fairness_text(a: str, ta: Tuning | None, b: str, tb: Tuning | None) -> str:
    problems = fairness(a, ta, b, tb)
    if problems:
        return "; ".join(problems)
    if ta is None:
        return "no tuning on either side: hyperparameters set by hand"
    return f"equal budgets ({ta.text()}); chosen values inside their grids"


# ---------------------------------------------------------------------------------------------- the report

def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table (`|` in cells escaped), as the report writes them (the report imports this
    module, so it cannot import the report's own)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)


def _space(rows: pd.DataFrame, names: Sequence[str]) -> str:
    grid = rows[pd.to_numeric(rows["extension"], errors="coerce") == 0]
    parts = []
    for name in names:
        values = sorted({_values(v) for v in grid[name].dropna()}, key=lambda v: (str(type(v)), v)) \
            if name in grid.columns else []
        added = sorted({_values(v) for v in rows.loc[rows.index.difference(grid.index), name].dropna()}
                       - set(values)) if name in rows.columns else []
        text = f"{name} in [{', '.join(_fmt(v) for v in values)}]"
        parts.append(text + (f", extended to {', '.join(_fmt(v) for v in added)}" if added else ""))
    return "; ".join(parts)


def _outcomes(rows: pd.DataFrame) -> str:
    counts = rows["status"].fillna("not run").value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _best_loss(rows: pd.DataFrame) -> str:
    chosen = rows[rows["chosen"].map(_true)]
    loss = pd.to_numeric(chosen["final_eval_loss"], errors="coerce").mean()
    return f"{loss:.4f}" if math.isfinite(loss) else "n/a"


def _groups_table(tuning: pd.DataFrame) -> str:
    rows = []
    for _, group in tuning.groupby(["optimizer", "model", "group_id"], sort=False):
        names = tuned_names(group)
        chosen = group[group["chosen"].map(_true)]
        choice = ", ".join(f"{n} = {_fmt(_values(chosen[n].iloc[0]))}" for n in names) if len(chosen) else "none"
        edges = str(chosen["edges"].dropna().iloc[0]) if len(chosen) and chosen["edges"].notna().any() else ""
        used = int(pd.to_numeric(group["extension"]).max())
        rows.append([str(group["optimizer"].iloc[0]), str(group["model"].iloc[0]), _space(group, names),
                     f"{len(group)} ({_outcomes(group)})", f"{used} of {int(group['extensions_allowed'].iloc[0])}",
                     choice, _best_loss(group), f"yes: {edges}" if edges else "no"])
    header = ["optimizer", "model", "search space (grid)", "trial runs", "extensions", "chosen",
              "final eval loss (chosen, mean over tuning seeds)", "at an edge"]
    return md_table(header, rows)


def _fairness_table(results_dir: Path) -> str | None:
    path = Path(results_dir) / VERDICTS_FILE
    if not path.is_file():
        return None
    verdicts = read_table(path)
    if verdicts.empty or "fairness" not in verdicts.columns:
        return None
    rows = [[str(r.get("config", r.get("optimizer"))), str(r.get("baseline")), str(r.get("tuning_budget")),
             str(r.get("baseline_tuning_budget")), str(r.get("fairness"))] for _, r in verdicts.iterrows()]
    return md_table(["optimizer", "baseline", "its tuning", "the baseline's tuning", "fair?"], rows)


def tuning_section(results_dir: Path) -> list[str]:
    """The report's "How each optimizer was tuned" parts (markdown), or [] when there is no tuning.csv."""
    tuning = read_tuning(results_dir)
    if tuning is None or tuning.empty:
        return []
    from swanbench.suite.tune import EDGE_TEXT, SELECT_TEXT

    seeds = sorted(int(s) for s in tuning["trial_seed"].unique())
    budgets = sorted({int(b) for b in tuning["budget"]})
    tokens = sorted({int(t) for t in tuning["tokens"]})
    ok = (tuning["status"] == OK).sum()
    parts = ["## How each optimizer was tuned (tuning.csv)\n",
             f"Every optimizer was tuned before evaluation with the same budget: {' / '.join(map(str, budgets))} "
             f"grid trial(s) each, tuning seed(s) {', '.join(map(str, seeds))} (disjoint from the evaluation "
             f"seeds), {' / '.join(f'{t:,}' for t in tokens)} training tokens per trial. Selection: {SELECT_TEXT}. "
             f"Edge rule: {EDGE_TEXT} (up to {int(tuning['extensions_allowed'].max())} point(s) per optimizer, "
             f"the same allowance for all). {len(tuning)} trial runs, {ok} ok.\n",
             _groups_table(tuning) + "\n"]
    fair = _fairness_table(results_dir)
    if fair:
        parts += ["### The tuning behind each verdict\n",
                  "A verdict claims \"better\" or \"sooner\" only when both sides had the same tuning budget and "
                  "neither chosen value sits at an edge of its grid; otherwise its text says why not.\n", fair + "\n"]
    return parts
