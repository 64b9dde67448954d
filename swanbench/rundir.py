"""The run-directory protocol: what one run's folder holds, who writes each file, and how to read it back.

A run is one (cell, seed) in its own process (or `world_size` processes under torchrun). Its folder::

    OUT/runs/<run_id>/config.json    the resolved cell, seed and suite (written by the parent, `write_config`)
                      env.json       versions, device, host, git revision (the worker; rank 0)
                      log.txt        the worker's stderr: log lines and any traceback (the launcher)
                      curves.csv     eval points so far (the worker, rewritten after every eval)
                      run.csv        the run's one runs.csv row; its existence marks the run complete
                      rank-<r>.csv   a multi-rank run: each rank's own row (the worker, one per rank)
                      ranks.csv      a multi-rank run: the ranks' rows side by side (the launcher, after exit)

The worker speaks to the launcher in progress events on stdout, one per line: `@swanbench {json}`.
Statuses and columns come from `swanbench.schema`; every file is written atomically (temp file + rename),
so a kill at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from swanbench import schema
from swanbench.tables import TableError, concat_tables, write_rows_atomic

CONFIG_FILE, ENV_FILE, ROW_FILE, CURVES_FILE, LOG_FILE = "config.json", "env.json", "run.csv", "curves.csv", "log.txt"
RANKS_FILE = schema.RANKS_FILE
SNAPSHOT_FILE = "memory_snapshot.pickle"
RANK_FILE_PREFIX = "rank-"
EVENT_PREFIX = "@swanbench "
ERROR_CHARS = 2000  # an error kept in a row: enough for a traceback's last lines, not a whole log


# ---------------------------------------------------------------------------------------------- files

def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV table as dicts (empty cells None), or [] if it is missing or unreadable."""
    try:
        return concat_tables([path], [])
    except TableError:
        return []


def run_status(run_dir: Path) -> str | None:
    """Status in the run's row file, or None if it has none (never ran, or was killed before writing).

    Read with the csv module, not pandas: resume checks every run and should answer at once.
    """
    import csv

    try:
        with open(Path(run_dir) / ROW_FILE, newline="") as fh:
            row = next(csv.DictReader(fh), None)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    return row.get("status") or None if row else None


def run_error(run_dir: Path) -> str | None:
    rows = read_rows(Path(run_dir) / ROW_FILE)
    return str(rows[0].get("error")) if rows and rows[0].get("error") else None


# ---------------------------------------------------------------------------------------------- the parent's side

def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Prepare a run's folder for a (re-)run: remove what an earlier attempt left, write config.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (ROW_FILE, RANKS_FILE, CURVES_FILE, ENV_FILE, SNAPSHOT_FILE):  # a re-run starts clean
        (run_dir / stale).unlink(missing_ok=True)
    for stale in run_dir.glob(f"{RANK_FILE_PREFIX}*.csv"):
        stale.unlink()
    write_json_atomic(run_dir / CONFIG_FILE, config)


def record_failure(run_dir: Path, status: str, error: str) -> str:
    """The row of a run the worker could not finish: identity from config/env, the status and the error."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG_FILE) or {}
    row = {**identity_row(config, read_json(run_dir / ENV_FILE)), "status": status, "error": error[:ERROR_CHARS]}
    curve = read_rows(run_dir / CURVES_FILE)
    if curve:
        row["steps_done"] = curve[-1].get("step")
    write_row(run_dir, row)
    return status


# ---------------------------------------------------------------------------------------------- the run's side

def data_label(data: dict[str, Any] | None) -> str:
    """A short, stable name of a cell's data spec for the `data` axis: "embedded", "file:news.txt vocab=512"."""
    data = data or {}
    label = str(data.get("source") or "embedded")
    if data.get("path"):
        label += f":{Path(str(data['path'])).name}"
    if data.get("tokenizer"):
        label += f" tokenizer={Path(str(data['tokenizer'])).name}"
    elif data.get("vocab_size"):
        label += f" vocab={data['vocab_size']}"
    return label


def identity_row(config: dict[str, Any], env: dict[str, Any] | None) -> dict[str, Any]:
    """The identity columns of a run (runs.csv and curves.csv) from its config.json and env.json."""
    from swanbench import __version__

    cell, env = config.get("cell") or {}, env or {}
    return {
        "schema_version": schema.SCHEMA_VERSION, "suite": config.get("suite"), "run_id": config.get("run_id"),
        "cell_id": config.get("cell_id"), "optimizer": cell.get("optimizer"), "model": cell.get("model"),
        "params": config.get("params"), "device": env.get("device") or cell.get("device"),
        "device_name": env.get("device_name"), "world_size": cell.get("world_size", 1), "dtype": cell.get("dtype"),
        "seq_len": cell.get("seq_len"), "batch_size": cell.get("batch_size"), "seed": config.get("seed"),
        "grad_accum": cell.get("grad_accum", 1), "parallelism": cell.get("parallelism"),
        "steps": cell.get("steps"), "eval_tokens": cell.get("eval_tokens"), "data": data_label(cell.get("data")),
        "suite_baseline": config.get("baseline"),
        "swanbench_version": __version__, "torch_version": env.get("torch_version"),
        "git_rev": env.get("git_rev"), "hostname": env.get("hostname"), "cpu_name": env.get("cpu_name"),
        "torch_threads": env.get("torch_threads"),
    }


def write_row(run_dir: Path, row: dict[str, Any]) -> Path:
    return write_rows_atomic(Path(run_dir) / ROW_FILE, [row], schema.RUNS_COLUMNS)


def write_rank_row(run_dir: Path, rank: int, row: dict[str, Any]) -> Path:
    return write_rows_atomic(Path(run_dir) / rank_row_file(rank), [{**row, "rank": str(rank)}],
                             schema.RANKS_COLUMNS)


def write_curve(run_dir: Path, identity: dict[str, Any], curve: list[dict[str, Any]]) -> Path:
    ident = {k: v for k, v in identity.items() if k != "status"}
    return write_rows_atomic(Path(run_dir) / CURVES_FILE, [{**ident, **point} for point in curve],
                             schema.CURVES_COLUMNS)


def event_writer(stream) -> Callable[[dict], None]:
    """Progress events as prefixed JSON lines on `stream` (flushed: the parent reads them live)."""
    def emit(event: dict) -> None:
        stream.write(EVENT_PREFIX + json.dumps(event, default=float) + "\n")
        stream.flush()

    return emit


def parse_event(line: str) -> dict | None:
    """The event of one stdout line of a worker, or None for any other line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


# ---------------------------------------------------------------------------------------------- ranks

def rank_row_file(rank: int) -> str:
    return f"{RANK_FILE_PREFIX}{rank}.csv"


def worst_status(statuses: Sequence[str | None]) -> str:
    """The run's status from its ranks': the first of crashed, timeout, oom, diverged, ok that a rank reported.

    A missing rank (None) counts as crashed only when no rank reported a failure: after one rank's OOM,
    torchrun stops the others before they can write, and the run is an OOM, not a crash.
    """
    reported = {s if s in schema.STATUS_PRIORITY else schema.CRASHED for s in statuses if s is not None}
    worst = next((s for s in schema.STATUS_PRIORITY if s in reported), schema.CRASHED)
    return schema.CRASHED if worst == schema.OK and None in statuses else worst


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value))


def combined_row(rows: Sequence[dict[str, Any]], world_size: int) -> dict[str, Any]:
    """The run's row from its per-rank rows, each column combined as the catalogue says
    (`schema.rank_aggregate`: memory and time the maximum over ranks, throughput the minimum, everything
    else rank 0's); the worst status; `ranks_reported`; the ranks' errors, each named by its rank."""
    ordered = sorted(rows, key=lambda r: int(r.get("rank") or 0))
    base = dict(ordered[0]) if ordered else {}
    for key in {k for r in rows for k in r}:
        values = [r[key] for r in rows if _is_number(r.get(key))]
        how = schema.rank_aggregate(key)
        if values and how in ("max", "min"):
            base[key] = max(values) if how == "max" else min(values)
    statuses = [r.get("status") for r in rows] + [None] * (world_size - len(rows))
    base["status"] = worst_status(statuses)
    errors = [f"rank {r.get('rank')}: {r['error']}" for r in ordered if r.get("error")]
    if len(rows) < world_size:
        missing = world_size - len(rows)
        errors.append(f"{missing} of {world_size} ranks wrote no row (killed or crashed: see log.txt)")
    base["error"] = "; ".join(errors)[:ERROR_CHARS] or None
    base.pop("rank", None)
    base["ranks_reported"] = len(rows)
    return base


def combine_rank_rows(run_dir: Path, world_size: int) -> dict[str, Any] | None:
    """A multi-rank run's ranks wrote rank-<r>.csv: write ranks.csv (one row per rank) and run.csv (the run).

    Returns the run's row, or None when no rank wrote a row (the caller records the crash or timeout).
    Called by the parent after torchrun exits, so a rank killed mid-run cannot leave a half-combined file.
    """
    run_dir = Path(run_dir)
    rows = [row for rank in range(world_size) for row in read_rows(run_dir / rank_row_file(rank))]
    for row in rows:
        row["rank"] = str(int(row["rank"])) if _is_number(row.get("rank")) else str(row.get("rank"))
    if not rows:
        return None
    write_rows_atomic(run_dir / RANKS_FILE, rows, schema.RANKS_COLUMNS)
    run = combined_row(rows, world_size)
    write_row(run_dir, run)
    return run


def world_size_of(run_dir: Path) -> int:
    cell = (read_json(Path(run_dir) / CONFIG_FILE) or {}).get("cell") or {}
    try:
        return max(1, int(cell.get("world_size", 1)))
    except (TypeError, ValueError):
        return 1
