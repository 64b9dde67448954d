"""The result tables: their columns, atomic writing, and validated reading.

Every table is tidy CSV (one row per observation, units in column names: bytes, ms, tokens).
A value a device cannot give is left empty, never written as zero. Tables are written once per run
(atomically: temp file + rename, so Ctrl-C or a kill never leaves half a file) and assembled per suite.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

# Renaming or removing a column bumps this; adding one does not.
SCHEMA_VERSION = 1

RUN_IDENTITY = [
    "schema_version", "suite", "run_id", "cell_id", "optimizer", "model", "params", "device",
    "device_name", "world_size", "dtype", "seq_len", "batch_size", "seed", "status",
    "swanbench_version", "torch_version",
]
RUN_MEASURES = [
    "param_bytes", "grad_bytes", "optimizer_state_bytes", "peak_allocated_bytes", "peak_reserved_bytes",
    "nvml_peak_bytes", "peak_rss_bytes", "step_transient_bytes", "step_ms", "forward_backward_ms",
    "optimizer_step_ms", "whitening_ms", "tokens_per_s", "final_eval_loss", "final_eval_ppl",
    "tokens_to_target",
]
RUNS_COLUMNS = RUN_IDENTITY + RUN_MEASURES

CURVE_MEASURES = ["run_id", "step", "tokens", "train_seconds", "train_loss", "eval_loss", "eval_ppl", "lr"]
# Curves carry the run's identity so a plot needs no join.
CURVES_COLUMNS = CURVE_MEASURES + [c for c in RUN_IDENTITY if c != "run_id"]

KERNELS_COLUMNS = [
    "operator", "method", "rows", "cols", "dtype", "device", "device_name", "steps", "ms_median",
    "ms_iqr", "flops", "tflops", "peak_bytes", "rel_error",
]

RUNS_FILE, CURVES_FILE, KERNELS_FILE = "runs.csv", "curves.csv", "kernels.csv"


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
    """Read a results CSV, failing with one clear line if it is missing, corrupt or lacks columns."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such results file")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: not a readable CSV table ({type(exc).__name__}: {exc})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TableError(f"{path}: missing column(s) {', '.join(missing)} (schema changed or wrong file?)")
    if "schema_version" in frame.columns and len(frame):
        versions = set(frame["schema_version"].dropna().astype(int))
        if versions - {SCHEMA_VERSION}:
            raise TableError(
                f"{path}: schema_version {sorted(versions)} but this swanbench reads {SCHEMA_VERSION}"
            )
    return frame


def concat_tables(paths: Iterable[Path], columns: Sequence[str]) -> list[dict]:
    """Rows of several per-run CSVs, in the given order (unreadable files are skipped by the caller)."""
    rows: list[dict] = []
    for p in paths:
        frame = read_table(p)
        rows.extend(frame.astype(object).where(frame.notna(), None).to_dict("records"))
    return rows
