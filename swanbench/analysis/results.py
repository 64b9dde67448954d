"""Reading a results directory for analysis: its tables as frames with one row per run, grouped and ordered.

Everything that reports, draws or judges results starts here, so that a figure, the report and the verdicts
agree about which runs count, which axes separate cells, in which order optimizers appear and which
optimizer is the baseline:

- `load_results(dir)`: runs.csv (one row per run; older tables are upgraded by `swanbench.tables`),
  curves.csv, kernels.csv, machine.csv, each None when absent and a one-line `TableError` when damaged;
- cells: `cell_axes` (model and device always; the other cell axes of `swanbench.schema` where they vary),
  `group_keys`, `select`; order: `optimizer_order` (the registry's display order, baseline first),
  `model_order` (by size);
- the baseline: `resolve_baseline` (the one asked for, else the suite's declared `baseline`, else adamw);
  `with_targets` fills tokens-to-target only when runs.csv lacks it for that baseline (assembly wrote it).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from swanbench import schema
from swanbench.hints import did_you_mean
from swanbench.schema import ALWAYS_AXES, CURVES_FILE, FAILED_STATUSES, KERNELS_FILE, MACHINE_FILE, OK, RUNS_FILE
from swanbench.tables import TableError, read_table

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
DEFAULT_BASELINE = "adamw"
# The cell axes shown only where they vary (model and device always show).
OPTIONAL_AXES = tuple(a for a in schema.CELL_AXES if a not in ALWAYS_AXES)

GIB, MIB, KIB = 1024**3, 1024**2, 1024
DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}
# Peak-memory columns in order of preference: live tensor bytes (CUDA allocator; on CPU the profiler's
# sampled step, which is what swanbench.estimate compares with), then the process views, which also hold
# the CUDA context or the interpreter and libraries.
PEAK_COLUMNS = (
    ("peak_allocated_bytes", "peak allocated (allocator)"),
    ("profiled_step_peak_bytes", "peak live tensors (profiler)"),
    ("nvml_peak_bytes", "peak process memory (NVML)"),
    ("peak_rss_bytes", "peak RSS (process)"),
)

# ---------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class Results:
    """The tables of one results directory; a table that is absent is None."""

    results_dir: Path
    runs: pd.DataFrame | None = None
    curves: pd.DataFrame | None = None
    kernels: pd.DataFrame | None = None
    machine: pd.DataFrame | None = None  # machine.csv: the measured matmul rate and copy bandwidth
    notes: list[str] = field(default_factory=list)


def _read_optional(path: Path) -> pd.DataFrame | None:
    # Absent is fine (a suite without kernels writes no kernels.csv); corrupt is an error (read_table raises).
    return read_table(path) if path.is_file() else None


def load_results(results_dir: Path) -> Results:
    """Read the three tables of `results_dir`; raise TableError if none is there or one is corrupt."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise TableError(f"{results_dir}: no such results directory")
    results = Results(results_dir, *(_read_optional(results_dir / f)
                                     for f in (RUNS_FILE, CURVES_FILE, KERNELS_FILE)))
    if results.runs is None and results.curves is None and results.kernels is None:
        raise TableError(f"{results_dir}: no {RUNS_FILE}, {CURVES_FILE} or {KERNELS_FILE} in it")
    results.machine = _read_optional(results_dir / MACHINE_FILE)
    if results.runs is not None:
        results.runs = normalise_runs_frame(results.runs, "runs", results.notes)
    if results.curves is not None:
        results.curves = normalise_runs_frame(results.curves, "curves", results.notes, _final_status(results.runs))
    return results


def _final_status(runs: pd.DataFrame | None) -> pd.Series | None:
    """run_id -> status from runs.csv (curve rows are written during the run, before its status is known)."""
    if runs is None or "run_id" not in runs.columns:
        return None
    return runs.drop_duplicates("run_id", keep="last").set_index("run_id")["status"]


def normalise_runs_frame(frame: pd.DataFrame, name: str, notes: list[str], status: pd.Series | None = None
                         ) -> pd.DataFrame:
    """Give a runs/curves frame the columns the summaries need, noting every assumption made."""
    frame = frame.copy()
    if "optimizer" not in frame.columns:
        raise TableError(f"{name}.csv: no optimizer column, so no run can be attributed")
    if status is not None and "run_id" in frame.columns:
        known = frame["run_id"].map(status)
        frame["status"] = known.where(known.notna(), frame["status"] if "status" in frame.columns else OK)
    if "status" not in frame.columns:
        # A run writes its row only when it finished, so without a status column every row is a finished run.
        notes.append(f"{name}.csv has no status column: every row is treated as an ok run")
        frame["status"] = OK
    frame["status"] = frame["status"].fillna("unknown").astype(str).str.lower()
    for axis in ALWAYS_AXES:
        if axis not in frame.columns:
            notes.append(f"{name}.csv has no {axis} column: shown as '?'")
            frame[axis] = "?"
    frame["optimizer"] = frame["optimizer"].astype(str)
    if "seed" not in frame.columns:
        frame["seed"] = pd.NA
    if "run_id" not in frame.columns:
        frame["run_id"] = [f"row{i}" for i in range(len(frame))]
    return frame


def with_targets(results: Results, baseline: str = DEFAULT_BASELINE) -> Results:
    """Runs with tokens-to-target against `baseline` (`swanbench.analysis.quality`'s definition: the first
    eval point at or below the baseline's final eval loss, same cell and seed, interpolated).

    The suite's assembly already wrote these columns for the suite's baseline: they are kept as they are.
    They are derived from the curves (and a note says so) only for another baseline, or for tables that
    lack them.
    """
    runs, curves = results.runs, results.curves
    if runs is None or curves is None or annotated_for(runs, baseline):
        return results
    from swanbench.analysis.quality import annotate_tokens_to_target

    try:
        annotated = annotate_tokens_to_target(runs, curves, baseline=baseline)
    except (KeyError, ValueError, TypeError) as exc:  # a figure or report must not fail on this extra
        log.warning("tokens to target not derived: %s: %s", type(exc).__name__, exc)
        return results
    results.runs = annotated
    if numeric(annotated, "tokens_to_target").notna().any():
        results.notes.append(f"tokens_to_target, seconds_to_target and effective_speedup are derived from "
                             f"curves.csv (target: {baseline}'s final eval loss in the same cell and seed)")
    return results


def annotated_for(runs: pd.DataFrame, baseline: str) -> bool:
    """runs.csv carries tokens-to-target computed against `baseline` (the suite's own, at assembly)."""
    if "tokens_to_target" not in runs.columns:
        return False
    declared = suite_baseline(runs)
    return declared is None or canonical_name(declared) == canonical_name(baseline)


def read_envs(results_dir: Path) -> list[dict]:
    """The environment records (`runs/*/env.json`) of a results directory, parsed as plain JSON."""
    envs = []
    # A training suite keeps one per run; a kernel suite one for the whole directory.
    paths = sorted(Path(results_dir).glob("runs/*/env.json")) + sorted(Path(results_dir).glob("env.json"))
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable environment record (%s)", path, exc)
            continue
        if isinstance(data, dict):
            envs.append(data)
    return envs


# ---------------------------------------------------------------------------------------------------------
# Ordering and grouping


def canonical_name(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def optimizer_order(names: Iterable[str], baseline: str | None = None) -> list[str]:
    """Names in the registry's display order (`OptimizerInfo.order`), the baseline first; names the registry
    does not know (a user's optimizer by import path) follow, sorted."""
    from optimizers.registry import display_order

    ordered = display_order([str(n) for n in names])
    first = [n for n in ordered if baseline is not None and canonical_name(n) == canonical_name(baseline)]
    return first + [n for n in ordered if n not in first]


def model_order(frame: pd.DataFrame) -> list[str]:
    """Model names from smallest to largest (by the `params` column, else the preset, else by name)."""
    names = [str(m) for m in frame["model"].dropna().unique()]
    sizes: dict[str, float] = {}
    if "params" in frame.columns:
        params = pd.to_numeric(frame["params"], errors="coerce")
        sizes = params.groupby(frame["model"].astype(str)).max().dropna().to_dict()
    missing = [n for n in names if n not in sizes]
    if missing:
        sizes.update(_preset_sizes(missing))
    return sorted(names, key=lambda n: (sizes.get(n, math.inf), n))


def _preset_sizes(names: Sequence[str]) -> dict[str, float]:
    # Imported only when the table lacks `params`: models.py pulls in torch, which is slow to import.
    from swanbench.models import PRESETS

    return {n: float(PRESETS[n].param_count()) for n in names if n in PRESETS}


def cell_axes(frame: pd.DataFrame) -> list[str]:
    """The axes that identify a cell in this frame: model and device, plus those of the rest that vary."""
    varying = [a for a in OPTIONAL_AXES if a in frame.columns and frame[a].nunique(dropna=False) > 1]
    return list(ALWAYS_AXES) + varying


def axis_label(axis: str, value: object) -> str:
    """`bf16`, `seq 256`, `bs 8`, `8 ranks`: a short text for one axis value in a title or table."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{axis} ?"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if axis == "dtype":
        return DTYPE_SHORT.get(str(value).replace("torch.", ""), str(value))
    prefix = {"seq_len": "seq ", "batch_size": "bs ", "world_size": "ranks "}.get(axis, "")
    return f"{prefix}{value}"


def group_keys(frame: pd.DataFrame, axes: Sequence[str]) -> list[tuple]:
    """Distinct values of `axes`, models ordered by size, the other axes sorted."""
    if frame.empty:
        return []
    keys = frame[list(axes)].drop_duplicates().itertuples(index=False, name=None)
    order = {m: i for i, m in enumerate(model_order(frame))}

    def sort_key(key: tuple) -> tuple:
        return tuple(order.get(str(v), -1) if a == "model" else str(v) for a, v in zip(axes, key))

    return sorted(keys, key=sort_key)


def select(frame: pd.DataFrame, axes: Sequence[str], key: tuple) -> pd.DataFrame:
    """The rows of `frame` whose `axes` equal `key` (NaN matches NaN)."""
    mask = pd.Series(True, index=frame.index)
    for axis, value in zip(axes, key):
        column = frame[axis]
        mask &= column.isna() if pd.isna(value) else (column == value)
    return frame[mask]


# ---------------------------------------------------------------------------------------------------------
# Derived measures


def numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    """`column` as floats; an absent column is all-NaN (unavailable), never zeros."""
    if column not in frame.columns:
        return pd.Series(math.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def peak_column(frame: pd.DataFrame) -> tuple[str, str] | None:
    """The most exact peak-memory column with any value in `frame`: (column, label), or None."""
    for column, label in PEAK_COLUMNS:
        if numeric(frame, column).notna().any():
            return column, label
    return None


def bytes_unit(max_bytes: float) -> tuple[float, str]:
    """(divisor, unit) for showing byte counts: GiB from 1 GiB up, MiB from 1 MiB up, else KiB."""
    if max_bytes >= GIB:
        return GIB, "GiB"
    return (MIB, "MiB") if max_bytes >= MIB else (KIB, "KiB")


def status_text(statuses: Counter) -> str:
    """`2 ok, 1 oom` in a fixed order (ok first, then the failure kinds)."""
    order = (OK, *FAILED_STATUSES)
    keys = sorted(statuses, key=lambda s: (order.index(s) if s in order else len(order), s))
    return ", ".join(f"{statuses[k]} {k}" for k in keys)


def outcome_text(statuses: Counter) -> str:
    """`missing` with no run, `oom` when every seed failed the same way, else the counts (`1 oom, 1 timeout`)."""
    if not statuses:
        return "missing"
    return next(iter(statuses)) if len(statuses) == 1 else status_text(statuses)


# ---------------------------------------------------------------------------------------------------------
# The baseline


def suite_baseline(runs: pd.DataFrame | None) -> str | None:
    """The baseline the suite declared (runs.csv `suite_baseline`, written at assembly), or None."""
    if runs is None or "suite_baseline" not in runs.columns:
        return None
    declared = runs["suite_baseline"].dropna().astype(str).unique()
    return str(declared[0]) if len(declared) == 1 else None


def baseline_of(runs: pd.DataFrame | None, requested: str | None = None) -> str:
    """The baseline to compare with: the one asked for, else the suite's declared one, else adamw."""
    return requested or suite_baseline(runs) or DEFAULT_BASELINE


def resolve_baseline(runs: pd.DataFrame | None, baseline: str) -> str | None:
    """The optimizer name in the table that matches `baseline` (case and -/_ insensitive), or None."""
    if runs is None:
        return None
    by_canonical = {canonical_name(o): o for o in runs["optimizer"].unique()}
    return by_canonical.get(canonical_name(baseline))


def baseline_hint(runs: pd.DataFrame, baseline: str) -> str:
    """`; did you mean 'adamw'?` for a baseline that is not in the table."""
    names = [str(o) for o in runs["optimizer"].unique()]
    return did_you_mean(baseline, names) or f" (optimizers here: {', '.join(sorted(names))})"


