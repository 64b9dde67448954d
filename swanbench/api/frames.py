"""`load(DIR)`: a results directory's tables as pandas frames, one row per run in `runs`.

    tables = swanbench.load("results/quickstart")
    tables.runs       # runs.csv: one row per run (identity, measures, status, errors)
    tables.curves     # curves.csv: one row per (run, eval point), identity columns included (None if absent)
    tables.ranks      # ranks.csv: the per-rank rows of multi-rank runs (None if there were none)
    tables.kernels    # kernels.csv of a kernels suite (None otherwise)

Tables are read as every command reads them (`swanbench.tables.read_table`): an older schema is upgraded,
a corrupt or newer file is a one-line `TableError`. Values a device could not give are NaN, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from swanbench import schema
from swanbench.tables import TableError, read_table

__all__ = ["Tables", "load"]


@dataclass
class Tables:
    """The tables of one results directory (a table that is absent is None; `runs` never is)."""

    path: Path
    runs: pd.DataFrame
    curves: pd.DataFrame | None = None
    ranks: pd.DataFrame | None = None
    kernels: pd.DataFrame | None = None


def _optional(path: Path) -> pd.DataFrame | None:
    return read_table(path) if path.is_file() else None


def load(path: str | Path) -> Tables:
    """The tables of results directory `path` (or of the directory holding the runs.csv file `path`)."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise TableError(f"{path}: no such results directory")
    runs = _optional(folder / schema.RUNS_FILE)
    kernels = _optional(folder / schema.KERNELS_FILE)
    if runs is None and kernels is None:
        raise TableError(f"{folder}: no {schema.RUNS_FILE} (or {schema.KERNELS_FILE}) in it")
    if runs is None:
        runs = pd.DataFrame(columns=list(schema.RUNS_COLUMNS))
    elif "run_id" in runs.columns:  # one row per run, the latest where a table was appended to by hand
        runs = runs.drop_duplicates("run_id", keep="last").reset_index(drop=True)
    return Tables(folder, runs, _optional(folder / schema.CURVES_FILE), _optional(folder / schema.RANKS_FILE),
                  kernels)
