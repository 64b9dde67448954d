"""The result tables on disk: atomic writing, and validated reading (their columns: `swanbench.schema`).

Every table is tidy CSV (one row per observation, units in column names: bytes, ms, tokens).
A value a device cannot give is left empty, never written as zero. Tables are written once per run
(atomically: temp file + rename, so Ctrl-C or a kill never leaves half a file) and assembled per suite.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from swanbench import schema
from swanbench.schema import RUNS_FILE, SCHEMA_VERSION

if TYPE_CHECKING:  # pandas is imported where a table is read: a run's worker only writes rows (csv module)
    import pandas as pd


class TableError(ValueError):
    """A results file that is missing, corrupt, or of another schema."""


def _cell(value: object) -> object:
    # Empty, never zero, for what a device cannot give; NaN/inf floats are written as text so they stay visible.
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def ordered_columns(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> list[str]:
    """The contract's columns first, in order, then any extra columns the rows carry (sorted)."""
    extra = sorted({k for r in rows for k in r} - set(columns))
    return list(columns) + extra


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_rows_atomic(path: Path, rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> Path:
    """Write rows as CSV to `path` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ordered_columns(rows, columns)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header, extrasaction="raise")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in header})
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a results table is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_table(path: Path, required: Iterable[str] = ()) -> pd.DataFrame:
    """Read a results CSV, failing with one clear line (naming the file, and the row and column where there
    is one) if it is missing, truncated, corrupt, lacks columns or holds text where the catalogue says a
    column is numeric. Nothing is ever built from a fragment of a table."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such results file")
    check_shape(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: not a readable CSV table ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TableError(f"{path}: missing column(s) {', '.join(missing)} (schema changed or wrong file?)")
    check_numbers(frame, path)
    return upgrade(frame, path)


def check_shape(path: Path) -> None:
    """TableError unless the file is UTF-8 CSV whose every row has the header's number of fields and which
    ends with a newline. Tables are written whole (`write_rows_atomic`), so a last line without its newline
    or a short row is a truncated or damaged file, which pandas would read as a smaller table."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TableError(f"{path}: not a readable CSV table (not UTF-8 text: byte {exc.start}, {exc.reason})") from None
    except OSError as exc:
        raise TableError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not text.strip():
        return  # pandas says "no columns" for an empty file
    if not text.endswith(("\n", "\r")):
        raise TableError(f"{path}: ends in the middle of a row (truncated?): a table's last line ends with a "
                         "newline")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise TableError(f"{path}: column(s) {', '.join(repeated)} appear twice in the header (damaged?)")
        for row in reader:
            if row and len(row) != len(header):
                raise TableError(f"{path}: line {reader.line_num} has {len(row)} fields, the header "
                                 f"{len(header)} (truncated or damaged)")
    except csv.Error as exc:
        raise TableError(f"{path}: not a readable CSV table (line {reader.line_num}: {exc})") from None


def check_numbers(frame: pd.DataFrame, path: Path) -> None:
    """TableError naming the row and column of the first value that is not a number in a column the
    catalogue (`swanbench.schema`) says is numeric; empty cells are fine (not measured)."""
    import pandas as pd

    for name in frame.columns:
        if not schema.is_numeric(name) or pd.api.types.is_numeric_dtype(frame[name]):
            continue
        values = frame[name]
        bad = values.notna() & pd.to_numeric(values, errors="coerce").isna()
        if bad.any():
            index = int(bad.to_numpy().nonzero()[0][0])
            raise TableError(f"{path}: row {index + 2}, column {name}: not a number ({values.iloc[index]!r})")


def _versions(frame: pd.DataFrame, path: Path) -> set[int]:
    """The schema versions of the rows that carry one (a kernels table's machine rows do not): whole numbers."""
    import pandas as pd

    try:
        values = pd.to_numeric(frame["schema_version"].dropna(), errors="raise")
    except (ValueError, TypeError):
        raise TableError(f"{path}: schema_version is not a number") from None
    if not all(math.isfinite(float(v)) and float(v).is_integer() for v in values):
        raise TableError(f"{path}: schema_version is not an integer")
    return {int(v) for v in values}


def upgrade(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A table of an older schema in today's shape, or TableError for a newer (unknown) one.

    Version 1 runs.csv tables held the per-rank rows of multi-rank runs beside their `rank = "max"` row:
    one row per run is kept (the per-rank rows belong in ranks.csv) and `rank` is dropped.
    """
    if "schema_version" not in frame.columns or not len(frame):
        return frame
    versions = _versions(frame, path)
    newer = sorted(v for v in versions if v > SCHEMA_VERSION or v < 1)
    if newer:
        raise TableError(f"{path}: schema_version {newer} but this swanbench reads 1 to {SCHEMA_VERSION}")
    if versions == {1} and "rank" in frame.columns and path.name == RUNS_FILE:
        frame = one_row_per_run(frame)
    return frame


def one_row_per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """A version-1 runs.csv with per-rank rows: each run's `rank = "max"` row where it has one; else its
    ranks' rows combined as the catalogue says (memory and time the maximum over ranks, throughput the
    minimum, the rest rank 0's). The `rank` column is dropped."""
    import pandas as pd

    if "run_id" not in frame.columns:
        return frame.drop(columns=["rank"])
    rank = frame["rank"].astype(str)
    with_max = set(frame.loc[rank == "max", "run_id"])
    summary = frame[(rank == "max") | frame["rank"].isna()]
    ranks = frame[~frame["run_id"].isin(with_max) & frame["rank"].notna() & (rank != "max")]
    if len(ranks):
        grouped = ranks.sort_values("rank", kind="stable").groupby("run_id", sort=False)
        how = {c: ("max" if schema.rank_aggregate(c) == "max" and pd.api.types.is_numeric_dtype(ranks[c]) else
                   "min" if schema.rank_aggregate(c) == "min" and pd.api.types.is_numeric_dtype(ranks[c]) else
                   "first") for c in ranks.columns if c != "run_id"}
        summary = pd.concat([summary, grouped.agg(how).reset_index()], ignore_index=True)
    return summary.drop(columns=["rank"]).reset_index(drop=True)


def concat_tables(paths: Iterable[Path], columns: Sequence[str]) -> list[dict]:
    """Rows of several per-run CSVs, in the given order (unreadable files are skipped by the caller)."""
    rows: list[dict] = []
    for p in paths:
        frame = read_table(p)
        rows.extend(frame.astype(object).where(frame.notna(), None).to_dict("records"))
    return rows
