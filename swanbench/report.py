"""Summaries of a results directory and its markdown report, from the tables alone.

Reads `runs.csv`, `curves.csv` and `kernels.csv` (never a log), groups runs into cells (optimizer x
model x device, plus whichever of dtype / seq_len / batch_size / world_size vary), counts seeds and
summarises every key measure as n, mean and spread, with a Diff % against a baseline optimizer.
The plotting module (`swanbench.plots`) draws from the same helpers, so a figure and the report never
disagree about which runs count.

Conventions, stated once:
- a run counts towards a mean only when its `status` is `ok`; other runs are listed as what they are
  (oom, diverged, timeout, crashed), never silently dropped;
- spread = sample standard deviation over seeds (ddof=1); with one seed there is no spread;
- Diff % = (mean - baseline mean) / baseline mean x 100 within the same cell (same model, device, ...);
- bytes are shown in KiB, MiB (1024^2) or GiB (1024^3), times in ms, as the column names say.

Also read when present: `machine.csv` (kernel suites' measured limits), `verdicts.csv` (swanbench.quality)
and the `env.json` records; tokens-to-target is derived from the curves when runs.csv leaves it empty.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import logging
import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from swanbench import __version__
from swanbench.tables import CURVES_FILE, KERNELS_FILE, RUNS_FILE, TableError, read_table

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
MACHINE_FILE = "machine.csv"  # written by swanbench.kernels beside kernels.csv
VERDICTS_FILE = "verdicts.csv"  # written by swanbench.quality beside runs.csv
FIGURES_DIR = "figures"
OK = "ok"
FAILED_STATUSES = ("oom", "diverged", "timeout", "crashed")

# Axes that, with the optimizer, identify a cell. model and device always show; the rest only when they vary.
ALWAYS_AXES = ("model", "device")
OPTIONAL_AXES = ("dtype", "seq_len", "batch_size", "world_size")

# Canonical optimizer order in every table and legend (unknown names follow, sorted).
OPTIMIZER_ORDER = ("adamw", "adam", "sgd", "sgd-momentum", "adafactor", "muon", "lion", "swan", "swan-fast",
                   "sinkgd")

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
        results.runs = normalise_runs_frame(one_row_per_run(results.runs, results.notes), "runs", results.notes)
    if results.curves is not None:
        results.curves = normalise_runs_frame(results.curves, "curves", results.notes, _final_status(results.runs))
    return results


def one_row_per_run(runs: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Distributed runs write one row per rank (and swanbench.distributed a combined `rank = "max"` row):
    keep one row per run, so seeds are not counted once per rank. The `max` row when there is one; else
    each byte/ms/seconds measure is the maximum over ranks (the fullest rank's memory, the slowest rank's
    time) and tokens_per_s the minimum."""
    if "rank" not in runs.columns or "run_id" not in runs.columns or not runs["run_id"].duplicated().any():
        return runs
    is_max = runs["rank"].astype(str) == "max"
    runs = runs[is_max | ~runs["run_id"].isin(set(runs.loc[is_max, "run_id"]))]
    notes.append("runs.csv has one row per rank: memory and time are the maximum over a run's ranks")
    if not runs["run_id"].duplicated().any():
        return runs.drop(columns=["rank"])
    grouped = runs.groupby("run_id", sort=False, dropna=False)
    worst = {c: grouped[c].max() for c in runs.columns if c.endswith(("_bytes", "_ms", "_seconds"))}
    if "tokens_per_s" in runs.columns:
        worst["tokens_per_s"] = grouped["tokens_per_s"].min()
    return grouped.first().assign(**worst).drop(columns=["rank"]).reset_index()


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


def with_targets(results: Results, baseline: str = "adamw") -> Results:
    """Fill tokens-to-target from the curves when runs.csv leaves it empty (swanbench.quality's definition:
    the first eval point at or below the baseline's final eval loss, same cell and seed, interpolated).

    Values already in runs.csv are kept as they are. Adds `seconds_to_target` and `effective_speedup`
    (the baseline run's total tokens / tokens to target) and notes that they were derived.
    """
    runs, curves = results.runs, results.curves
    if runs is None or curves is None or numeric(runs, "tokens_to_target").notna().any():
        return results
    from swanbench.quality import annotate_tokens_to_target

    try:
        annotated = annotate_tokens_to_target(runs, curves, baseline=baseline)
    except (KeyError, ValueError, TypeError) as exc:  # a figure or report must not fail on this extra
        log.warning("tokens to target not derived: %s: %s", type(exc).__name__, exc)
        return results
    if numeric(annotated, "tokens_to_target").notna().any():
        results.runs = annotated
        results.notes.append(f"tokens_to_target, seconds_to_target and effective_speedup are derived from "
                             f"curves.csv (target: {baseline}'s final eval loss in the same cell and seed)")
    return results


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
    """Names in the canonical order (baseline first), unknown names after, sorted."""
    names = list(dict.fromkeys(str(n) for n in names))
    rank = {n: i for i, n in enumerate(OPTIMIZER_ORDER)}

    def key(n: str) -> tuple:
        return (canonical_name(n) != baseline, rank.get(canonical_name(n), len(rank)), n)

    return sorted(names, key=key)


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


@dataclass
class Summary:
    """One optimizer in one cell, for one measure: seeds counted, mean and spread over ok runs."""

    key: tuple
    optimizer: str
    statuses: Counter
    values: list[float]

    @property
    def n_total(self) -> int:
        return sum(self.statuses.values())

    @property
    def n_ok(self) -> int:
        return self.statuses.get(OK, 0)

    @property
    def n(self) -> int:
        """Seeds that gave a value for this measure."""
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def spread(self) -> float:
        """Sample standard deviation over seeds (ddof=1); NaN with fewer than two."""
        if len(self.values) < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))


def summarise(runs: pd.DataFrame, values: pd.Series, axes: Sequence[str], optimizers: Sequence[str]
              ) -> list[Summary]:
    """A Summary for every (cell, optimizer) in the grid, including ones with no run at all."""
    out = []
    for key in group_keys(runs, axes):
        cell = select(runs, axes, key)
        for opt in optimizers:
            rows = cell[cell["optimizer"] == opt]
            ok = rows["status"] == OK
            vals = values.loc[rows.index][ok].dropna()
            vals = [float(v) for v in vals if math.isfinite(v)]
            out.append(Summary(key, opt, Counter(rows["status"]), vals))
    return out


def diff_percent(value: float, baseline: float) -> float:
    """(value - baseline) / baseline x 100; NaN when either is missing or the baseline is zero."""
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    return (value - baseline) / baseline * 100.0


# ---------------------------------------------------------------------------------------------------------
# Markdown


@dataclass(frozen=True)
class Measure:
    """A key figure of runs.csv: its column, a title, and how its numbers are shown."""

    column: str
    title: str
    kind: str  # "bytes", "ms", "count" or "plain"
    note: str = ""


MEASURES = (
    Measure("final_eval_ppl", "Final eval perplexity (token-weighted)", "plain", "lower is better"),
    Measure("final_eval_ppl_galore", "Final eval perplexity (GaLore-compatible)", "plain",
            "the reference script's biased mean, for comparing with published tables"),
    Measure("tokens_to_target", "Tokens to reach the target perplexity", "count",
            "empty seeds did not reach it"),
    Measure("seconds_to_target", "Training seconds to reach the target perplexity", "plain",
            "eval excluded; empty seeds did not reach it"),
    Measure("effective_speedup", "Effective speedup over the baseline", "plain",
            "baseline's total tokens / tokens to target; higher is better, 1 = as fast as the baseline"),
    Measure("peak_allocated_bytes", "Peak allocated memory (allocator)", "bytes"),
    Measure("profiled_step_peak_bytes", "Peak live tensor memory in a profiled step (profiler)", "bytes"),
    Measure("estimate_bytes", "Analytic estimate of the peak (swanbench estimate)", "bytes"),
    Measure("unexplained_bytes", "Measured peak − estimate", "bytes", "what the analytic model misses"),
    Measure("nvml_peak_bytes", "Peak process memory (NVML, GPU)", "bytes"),
    Measure("peak_rss_bytes", "Peak resident memory (RSS, CPU process)", "bytes",
            "includes the Python interpreter and libraries"),
    Measure("optimizer_state_bytes", "Optimizer state", "bytes"),
    Measure("step_transient_bytes", "Transient memory inside optimizer.step()", "bytes"),
    Measure("step_ms", "Step time (median)", "ms"),
    Measure("forward_backward_ms", "Forward + backward (median)", "ms"),
    Measure("optimizer_step_ms", "optimizer.step() (median)", "ms"),
    Measure("whitening_ms", "Whitening / normalisation inside the step (median)", "ms"),
    Measure("tokens_per_s", "Throughput", "count", "higher is better"),
    Measure("train_seconds", "Training time", "plain", "seconds, eval excluded"),
)


def fmt_number(value: float) -> str:
    """3 significant digits, thousands separators for large numbers; NaN as n/a."""
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value:.3g}"
    # 999.7 rounds to "1e+03" in 3 significant digits: large numbers are written out instead.
    return f"{value:,.0f}" if abs(value) >= 1000 or "e+" in text else text


def fmt_diff(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+,.0f} %" if abs(value) >= 1000 else f"{value:+.1f} %"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table; `|` inside cells is escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), line(["---"] * len(header))]
    lines += [line(r) for r in rows]
    return "\n".join(lines)


def _unit(measure: Measure, values: pd.Series) -> tuple[float, str]:
    if measure.kind == "bytes":
        return bytes_unit(float(values.abs().max()) if values.notna().any() else 0.0)
    return 1.0, {"ms": "ms", "count": "", "plain": ""}[measure.kind]


def n_text(s: Summary) -> str:
    """Seeds that count, out of those that ran, with the failures named: `2/3 (1 oom)`."""
    failed = Counter({k: v for k, v in s.statuses.items() if k != OK})
    text = f"{s.n}/{s.n_total}"
    return f"{text} ({status_text(failed)})" if failed else text


def iqr_column(runs: pd.DataFrame, column: str) -> pd.Series:
    """The within-run IQR of a time column: `step_iqr_ms` for `step_ms` (or `step_ms_iqr`); NaN if absent."""
    stem = column[: -len("_ms")] if column.endswith("_ms") else column
    for name in (f"{stem}_iqr_ms", f"{column}_iqr"):
        if name in runs.columns:
            return numeric(runs, name)
    return numeric(runs, f"{column}_iqr")


def mean_text(s: Summary, scale: float) -> str:
    """The mean, or what happened instead: `missing (no run)`, `oom`, `1 oom, 1 timeout`, `n/a`."""
    if s.n_total == 0:
        return "missing (no run)"
    if s.n_ok == 0:
        return outcome_text(s.statuses)
    return fmt_number(s.mean / scale)


def measure_section(runs: pd.DataFrame, measure: Measure, axes: Sequence[str], optimizers: Sequence[str],
                    baseline: str) -> str | None:
    """The markdown table of one measure, or None if no run has a value for it."""
    values = numeric(runs, measure.column)
    if not values[runs["status"] == OK].notna().any():
        return None
    scale, unit = _unit(measure, values)
    summaries = summarise(runs, values, axes, optimizers)
    base_means = {s.key: s.mean for s in summaries if s.optimizer == baseline}
    # A per-run spread (IQR over the timed steps of one run) shows beside the spread over seeds.
    iqr = iqr_column(runs, measure.column)
    iqrs = summarise(runs, iqr, axes, optimizers) if iqr[runs["status"] == OK].notna().any() else None
    rows = []
    for i, s in enumerate(summaries):
        base = base_means.get(s.key, math.nan)
        diff = "baseline" if s.optimizer == baseline else fmt_diff(diff_percent(s.mean, base))
        spread = "–" if not math.isfinite(s.spread) else fmt_number(s.spread / scale)
        cells = [axis_label(a, v) if a not in ALWAYS_AXES else str(v) for a, v in zip(axes, s.key)]
        extra = [fmt_number(iqrs[i].mean / scale) if iqrs[i].n else "n/a"] if iqrs else []
        rows.append([*cells, s.optimizer, n_text(s), mean_text(s, scale), spread, *extra, diff])
    unit_text = f" [{unit}]" if unit else ""
    iqr_header = [f"IQR within run{unit_text}"] if iqrs else []
    header = [*axes, "optimizer", "n", f"mean{unit_text}", f"spread{unit_text}", *iqr_header,
              f"Diff % vs {baseline}"]
    note = f": {measure.note}" if measure.note else ""
    return f"### {measure.title}{unit_text}\n\n`{measure.column}`{note}\n\n{md_table(header, rows)}\n"


GLANCE = (("final_eval_ppl", "final ppl"), ("peak", "peak memory"), ("optimizer_state_bytes", "optimizer state"),
          ("step_ms", "step [ms]"), ("tokens_per_s", "tokens/s"))


def peak_per_device(runs: pd.DataFrame) -> tuple[pd.Series, dict[str, str]]:
    """Each run's peak memory from the most exact column its device gives (allocator on GPU, profiler or RSS
    on CPU), and which column that is per device."""
    values = pd.Series(math.nan, index=runs.index, dtype=float)
    sources: dict[str, str] = {}
    for device, rows in runs.groupby(runs["device"].astype(str), sort=True):
        peak = peak_column(rows[rows["status"] == OK])
        if peak is not None:
            values.loc[rows.index] = numeric(rows, peak[0])
            sources[device] = peak[1]
    return values, sources


def fmt_bytes(value: float) -> str:
    """`85.3 MiB`, `3.91 GiB`: byte counts with their own unit (1024-based), for mixed-size tables."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0 B"
    scale, unit = bytes_unit(abs(value))
    return f"{fmt_number(value / scale)} {unit}"


def glance_section(runs: pd.DataFrame, axes: Sequence[str], optimizers: Sequence[str], baseline: str) -> str:
    """One row per (cell, optimizer): the headline means, each with its Diff % against the baseline."""
    columns, notes = [], []
    for column, title in GLANCE:
        if column == "peak":
            values, sources = peak_per_device(runs)
            notes = [f"{device}: {source}" for device, source in sources.items()]
        else:
            values = numeric(runs, column)
        if not values[runs["status"] == OK].notna().any():
            continue
        is_bytes = column == "peak" or column.endswith("_bytes")
        columns.append((title, is_bytes, summarise(runs, values, axes, optimizers)))
    if not columns:
        return ""
    rows = []
    for i, first in enumerate(columns[0][2]):
        cells = [str(v) if a in ALWAYS_AXES else axis_label(a, v) for a, v in zip(axes, first.key)]
        rows.append([*cells, first.optimizer, n_text(first),
                     *(_glance_cell(summaries, i, is_bytes, baseline) for _, is_bytes, summaries in columns)])
    header = [*axes, "optimizer", "n", *(title for title, _, _ in columns)]
    peak_note = f" Peak memory is, per device, {'; '.join(notes)}." if notes else ""
    return (f"### At a glance\n\nMean over ok seeds, (Diff % vs {baseline}) in brackets.{peak_note}\n\n"
            + md_table(header, rows) + "\n")


def _glance_cell(summaries: list[Summary], i: int, is_bytes: bool, baseline: str) -> str:
    s = summaries[i]
    if s.n_ok == 0 or s.n == 0:
        return mean_text(s, 1.0)
    text = fmt_bytes(s.mean) if is_bytes else fmt_number(s.mean)
    if s.optimizer != baseline:
        base = next((b.mean for b in summaries if b.key == s.key and b.optimizer == baseline), math.nan)
        text += f" ({fmt_diff(diff_percent(s.mean, base))})"
    return text


def environment_section(results: Results, envs: list[dict]) -> str:
    """Identity columns of the runs, then the flattened env.json records (values that differ are counted)."""
    rows: list[list[str]] = []
    frames = [f for f in (results.runs, results.kernels) if f is not None]
    for column in ("suite", "device", "device_name", "world_size", "dtype", "seq_len", "batch_size",
                   "torch_version", "swanbench_version"):
        values = dict.fromkeys(_plain(v) for f in frames if column in f.columns for v in f[column].dropna())
        if values:
            rows.append([f"`{column}` (tables)", ", ".join(values)])
    merged: dict[str, Counter] = {}
    for env in envs:
        for key, value in _flatten(env).items():
            merged.setdefault(key, Counter())[value] += 1
    rows += [[f"`{k}`", _counted(v)] for k, v in sorted(merged.items())]
    if not rows:
        return "No environment recorded (no identity columns, no env.json).\n"
    source = f"{len(envs)} env.json record(s)" if envs else "no env.json records"
    return f"From the tables' identity columns and {source}.\n\n" + md_table(["field", "value"], rows) + "\n"


def _flatten(data: dict, prefix: str = "") -> dict[str, str]:
    # Nested dicts become dotted keys; lists are joined; long values are cut so one field cannot swamp the page.
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
            out[name] = text if len(text) <= 160 else text[:157] + "..."
    return out


def _plain(value: object) -> str:
    # 8.0 read back from a CSV column with gaps is the integer 8.
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _counted(values: Counter) -> str:
    if len(values) == 1:
        return next(iter(values))
    return "; ".join(f"{v} ({n}x)" for v, n in values.most_common())


def find_command(results_dir: Path, envs: list[dict]) -> str | None:
    """The command that produced the results: `command.txt`, else an env.json `command`/`argv` field."""
    path = Path(results_dir) / "command.txt"
    if path.is_file():
        return path.read_text().strip() or None
    for env in envs:
        for key in ("command", "cmdline", "argv"):
            value = env.get(key)
            if isinstance(value, list) and value:
                return shlex.join(map(str, value))
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def runs_section(runs: pd.DataFrame, axes: Sequence[str]) -> str:
    """How many runs and cells, by status, and every run that did not finish ok, with its error."""
    counts = Counter(runs["status"])
    cells = len(runs[[*axes, "optimizer"]].drop_duplicates())
    text = f"{len(runs)} run(s) in {cells} cell(s): {status_text(counts)}.\n"
    failed = runs[runs["status"] != OK]
    if failed.empty:
        return text
    rows = []
    for _, r in failed.iterrows():
        error = str(r.get("error", "")) if pd.notna(r.get("error", math.nan)) else ""
        error = error.replace("\n", " ")[:200]
        rows.append([str(r["run_id"]), str(r["optimizer"]), *[str(r[a]) for a in axes],
                     fmt_seed(r["seed"]), r["status"], error or "–"])
    header = ["run_id", "optimizer", *axes, "seed", "status", "error"]
    return text + "\nRuns that did not finish ok:\n\n" + md_table(header, rows) + "\n"


def fmt_seed(seed: object) -> str:
    return "?" if pd.isna(seed) else str(int(float(seed)))


def kernels_section(kernels: pd.DataFrame) -> str:
    """The operator micro-benchmarks, one row each, machine reference rows (matmul, copy) first."""
    frame = kernels.copy()
    frame["_machine"] = frame.get("operator", pd.Series("", index=frame.index)).isin(["matmul", "copy"])
    order = [c for c in ("_machine", "operator", "method", "dtype", "rows", "cols") if c in frame.columns]
    frame = frame.sort_values(order, ascending=[c != "_machine" for c in order], key=_sortable)
    columns = [("operator", str), ("method", str), ("device", str), ("dtype", str), ("compile", str),
               ("batch", _intish), ("rows", _intish), ("cols", _intish), ("status", str),
               ("ms_median", fmt_number), ("ms_iqr", fmt_number), ("tflops", fmt_number),
               ("frac_of_matmul_peak", fmt_number), ("gbps", fmt_number), ("frac_of_bandwidth", fmt_number),
               ("peak_bytes", _mib), ("rel_error", _sci), ("skip_reason", str)]
    present = [(c, f) for c, f in columns if c in frame.columns and frame[c].notna().any()]
    rows = [[_cell_text(r[c], f) for c, f in present] for _, r in frame.iterrows()]
    header = [("peak_bytes [MiB]" if c == "peak_bytes" else c) for c, _ in present]
    return md_table(header, rows) + "\n"


def verdicts_section(verdicts: pd.DataFrame) -> str:
    """verdicts.csv (swanbench.quality): per optimizer, does it beat the baseline, and does it get there sooner?"""
    def interval(row: pd.Series, mean: str, low: str, high: str) -> str:
        values = [pd.to_numeric(row.get(c), errors="coerce") for c in (mean, low, high)]
        if pd.isna(values[0]):
            return "n/a"
        ci = f" [{fmt_number(values[1])}, {fmt_number(values[2])}]" if pd.notna(values[1]) else ""
        return fmt_number(values[0]) + ci

    keys = [c for c in ("model", "dtype") if c in verdicts.columns]
    if "config" in verdicts.columns and (verdicts["config"].astype(str) != verdicts["optimizer"].astype(str)).any():
        keys.append("config")  # only when a config differs from its optimizer's name (an hparam sweep)
    rows = []
    for _, r in verdicts.iterrows():
        reached = (f"{_cell_text(r.get('n_reached'), _intish)}/{_cell_text(r.get('n_seeds'), _intish)}"
                   if "n_reached" in verdicts.columns else "n/a")
        rows.append([*(str(r[c]) for c in keys), str(r.get("optimizer")), str(r.get("baseline", "")),
                     interval(r, "final_loss_diff", "final_loss_diff_ci_low", "final_loss_diff_ci_high"),
                     str(r.get("final_loss_verdict", "n/a")), reached,
                     interval(r, "gmean_speedup", "speedup_ci_low", "speedup_ci_high"),
                     str(r.get("sooner_verdict", "n/a"))])
    header = [*keys, "optimizer", "baseline", "final eval loss − baseline [95% CI]", "verdict",
              "seeds reaching target", "effective speedup (geometric mean) [95% CI]", "sooner?"]
    rules = [f"- {r}" for c in ("final_loss_rule", "sooner_rule") if c in verdicts.columns
             for r in verdicts[c].dropna().unique()]
    return md_table(header, rows) + "\n" + ("\nRules:\n\n" + "\n".join(rules) + "\n" if rules else "")


def machine_section(machine: pd.DataFrame) -> str:
    """machine.csv: the matmul rate per dtype and size and the copy bandwidth, measured in the same run."""
    columns = [("measure", str), ("device", str), ("dtype", str), ("size", _intish), ("ms_median", fmt_number),
               ("tflops", fmt_number), ("gbps", fmt_number)]
    present = [(c, f) for c, f in columns if c in machine.columns and machine[c].notna().any()]
    rows = [[_cell_text(r[c], f) for c, f in present] for _, r in machine.iterrows()]
    return md_table([c for c, _ in present], rows) + "\n"


def _sortable(column: pd.Series) -> pd.Series:
    return column if column.dtype != object else column.astype(str)


def _cell_text(value: object, fmt) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    try:
        return fmt(float(value)) if fmt is not str else str(value)
    except (TypeError, ValueError):
        return str(value)


def _intish(value: float) -> str:
    return str(int(value))


def _mib(value: float) -> str:
    return fmt_number(value / MIB)


def _sci(value: float) -> str:
    return f"{value:.2e}"


FIGURE_ORDER = ("memory", "time", "kernels", "perplexity", "pareto")


def figures_section(results_dir: Path) -> str | None:
    """Links to the PNG figures already drawn in RESULTS/figures, in the plotting module's order."""
    rank = {n: i for i, n in enumerate(FIGURE_ORDER)}
    figures = sorted((Path(results_dir) / FIGURES_DIR).glob("*.png"), key=lambda p: (rank.get(p.stem, 99), p.stem))
    if not figures:
        return None
    return "\n".join(f"![{p.stem}]({FIGURES_DIR}/{p.name})" for p in figures) + "\n"


def resolve_baseline(runs: pd.DataFrame | None, baseline: str) -> str | None:
    """The optimizer name in the table that matches `baseline` (case and -/_ insensitive), or None."""
    if runs is None:
        return None
    by_canonical = {canonical_name(o): o for o in runs["optimizer"].unique()}
    return by_canonical.get(canonical_name(baseline))


def baseline_hint(runs: pd.DataFrame, baseline: str) -> str:
    """`; did you mean 'adamw'?` for a baseline that is not in the table."""
    names = [str(o) for o in runs["optimizer"].unique()]
    close = difflib.get_close_matches(baseline, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (optimizers here: {', '.join(sorted(names))})"


def build_report(results: Results, baseline: str = "adamw", command: str | None = None) -> str:
    """The markdown text of the report of `results`."""
    resolved = resolve_baseline(results.runs, baseline)
    results = with_targets(results, resolved or baseline)
    envs = read_envs(results.results_dir)
    command = command or find_command(results.results_dir, envs)
    runs = results.runs
    suites = sorted({str(s) for f in (runs, results.kernels) if f is not None and "suite" in f.columns
                     for s in f["suite"].dropna()})
    title = ", ".join(suites) or results.results_dir.name
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tables = [f for f in (RUNS_FILE, CURVES_FILE, KERNELS_FILE, MACHINE_FILE, VERDICTS_FILE)
              if (results.results_dir / f).is_file()]
    parts = [f"# swanbench report: {title}\n",
             f"Results `{results.results_dir}`, report written {stamp} by swanbench {__version__} from the "
             f"tables alone ({', '.join(tables)}; no log is read).\n",
             "## Command\n",
             f"```bash\n{command}\n```\n" if command else "Not recorded (no command.txt, no command in env.json).\n",
             "## Environment\n", environment_section(results, envs)]
    parts += [f"> Note: {n}\n" for n in results.notes]
    if runs is not None and len(runs):
        parts += _runs_parts(runs, baseline)
        parts += _verdict_parts(results.results_dir)
    elif runs is not None:
        parts += ["## Runs\n", "runs.csv has no rows: no run has finished yet.\n"]
    if results.kernels is not None and len(results.kernels):
        parts += ["## Operator micro-benchmarks (kernels.csv)\n",
                  "Median (and IQR) over the timed calls after warm-up; `frac_of_*` compare the achieved rate "
                  "with the machine's limits measured in the same run.\n"]
        if results.machine is not None and len(results.machine):
            parts += ["### Machine limits (machine.csv)\n", machine_section(results.machine)]
        parts += [kernels_section(results.kernels)]
    figures = figures_section(results.results_dir)
    if figures:
        parts += ["## Figures\n", figures]
    return "\n".join(parts)


def _runs_parts(runs: pd.DataFrame, baseline: str) -> list[str]:
    axes = cell_axes(runs)
    resolved = resolve_baseline(runs, baseline)
    optimizers = optimizer_order(runs["optimizer"].unique(), canonical_name(baseline))
    parts = ["## Runs\n", runs_section(runs, axes), f"## Key figures per cell (baseline: {baseline})\n"]
    if resolved is None:
        parts.append(f"> Baseline {baseline!r} is not in these results{baseline_hint(runs, baseline)}: "
                     "Diff % is n/a.\n")
    parts.append(
        "How to read: n = seeds with a value / seeds run (failures named); mean over the seeds whose status is "
        "ok; spread = sample standard deviation over those seeds (– with one seed); Diff % = (mean − baseline "
        "mean) / baseline mean × 100 in the same cell; a cell with no run shows `missing (no run)`, one whose "
        "runs all failed shows their status. KiB = 1024 bytes, MiB = 1024² bytes, GiB = 1024³ bytes.\n")
    parts.append(glance_section(runs, axes, optimizers, resolved or baseline))
    for measure in MEASURES:
        section = measure_section(runs, measure, axes, optimizers, resolved or baseline)
        if section:
            parts.append(section)
    return parts


def _verdict_parts(results_dir: Path) -> list[str]:
    """The verdicts table, when swanbench.quality has written verdicts.csv beside the tables."""
    path = Path(results_dir) / VERDICTS_FILE
    if not path.is_file():
        return []
    verdicts = read_table(path)
    if verdicts.empty:
        return []
    return ["## Verdicts (verdicts.csv)\n",
            "Written by `swanbench.quality` from the same tables: paired by seed against the baseline.\n",
            verdicts_section(verdicts)]


def write_report(results_dir: Path, baseline: str = "adamw", command: str | None = None) -> Path:
    """Write `results_dir/report.md` from the tables and return its path (atomically replaced)."""
    results = load_results(Path(results_dir))
    text = build_report(results, baseline=baseline, command=command)
    path = Path(results_dir) / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
