"""The one column catalogue of swanbench's result tables, and the run statuses.

Every module that writes, reads, groups, compares, checks or draws a column asks this catalogue what the
column is: its role (identity of a run, an axis that separates cells, a measure, a spread, ...), its unit,
which direction is better, the regression gate's class for it, its title in reports and figures, and how a
multi-rank run combines its ranks' values. Nothing else lists run-identity columns or status names.

Tables (tidy CSV, one row per observation, units in the column names; see README "Result tables"):

- `runs.csv`    one row per run (a multi-rank run: its combined row; the per-rank rows are in `ranks.csv`);
- `ranks.csv`   one row per rank of each multi-rank run, with a `rank` column;
- `curves.csv`  one row per (run, eval point), with the run's identity columns (a plot needs no join);
- `kernels.csv` one row per operator micro-benchmark (suite kind "kernels");
- `tuning.csv`  one row per tuning trial.

Renaming or removing a column bumps `SCHEMA_VERSION`; adding one does not. `tables.read_table` upgrades
tables of older versions on read (`upgrade_runs`), so committed result sets stay readable.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable

# 1: runs.csv mixed per-rank rows (rank "0", "1", ...) with the run's `rank = "max"` row.
# 2: runs.csv has one row per run; per-rank rows live in ranks.csv; cell axes steps/eval_tokens/data added.
SCHEMA_VERSION = 2

# ---------------------------------------------------------------------------------------------- statuses

OK, OOM, DIVERGED, TIMEOUT, CRASHED = "ok", "oom", "diverged", "timeout", "crashed"
STATUSES = (OK, OOM, DIVERGED, TIMEOUT, CRASHED)
# Outcomes a rerun would reproduce: resume skips them. A timeout or a crash may be the machine's fault.
FINAL_STATUSES = frozenset({OK, OOM, DIVERGED})
FAILED_STATUSES = (OOM, DIVERGED, TIMEOUT, CRASHED)
# When a run's ranks disagree, the worst status wins (one rank's OOM is the run's OOM).
STATUS_PRIORITY = (CRASHED, TIMEOUT, OOM, DIVERGED, OK)
# What each status means, for reports and the README.
STATUS_MEANING = {
    OK: "finished; its measures count",
    OOM: "out of memory (a CUDA OOM, a CPU allocator failure, or the cell's memory_budget exceeded)",
    DIVERGED: "the training loss became non-finite (the curve so far is kept)",
    TIMEOUT: "killed after the cell's timeout_s",
    CRASHED: "any other failure; the error is kept in the row",
}

# ---------------------------------------------------------------------------------------------- tables

RUNS_FILE, RANKS_FILE, CURVES_FILE = "runs.csv", "ranks.csv", "curves.csv"
KERNELS_FILE, TUNING_FILE = "kernels.csv", "tuning.csv"
SUMMARY_FILE, VERDICTS_FILE, MACHINE_FILE, MODELS_FILE = "summary.csv", "verdicts.csv", "machine.csv", "models.csv"

# Column roles.
IDENTITY = "identity"      # which run this row is (contract columns first)
AXIS = "axis"              # an identity column that separates cells (besides optimizer and seed)
MEASURE = "measure"        # a measured value
SPREAD = "spread"          # the interquartile range of a measured median
ANNOTATION = "annotation"  # derived at suite level from several runs (tokens-to-target)
ESTIMATE = "estimate"      # the analytic estimate of this run (swanbench estimate)
INFO = "info"              # facts about the run (versions, host, resolved hyperparameters)
ERROR = "error"            # why a run failed or why a measure is missing (one line)


# Units whose columns hold numbers; a column without a unit is a label unless its entry says numeric=True.
NUMERIC_UNITS = frozenset({"bytes", "ms", "s", "tokens", "tokens/s", "nats", "x", "count", "%"})


@dataclass(frozen=True)
class Column:
    """One column (or a family, when `name` is a glob such as `optimizer_state_bytes.*`).

    unit: "bytes", "ms", "s", "tokens", "tokens/s", "nats", "x" (a ratio), "count" or "" (a label).
    better: "lower", "higher" or "none" (any change is suspect); None for what is not a quality of a run.
    check: the regression gate's class (`swanbench check`), None when the gate does not compare it.
    ranks: how a multi-rank run's row combines its ranks' values: "max" (memory, time: the fullest rank,
        the slowest rank), "min" (throughput: global tokens over the slowest rank's time) or "first"
        (rank 0's: eval losses, identity, facts; every rank evaluates the same model).
    """

    name: str
    role: str
    unit: str = ""
    better: str | None = None
    check: str | None = None
    title: str = ""
    ranks: str = "first"
    note: str = ""
    numeric: bool | None = None  # None: numeric when the unit is one of NUMERIC_UNITS

    @property
    def is_numeric(self) -> bool:
        """Whether every value of the column is a number (or empty): what a table reader checks."""
        return self.numeric if self.numeric is not None else self.unit in NUMERIC_UNITS

    def matches(self, column: str) -> bool:
        return column == self.name or (_is_glob(self.name) and fnmatch.fnmatchcase(column, self.name))


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _bytes(name: str, title: str = "", check: str | None = None, role: str = MEASURE, note: str = "",
           better: str | None = "lower") -> Column:
    return Column(name, role, "bytes", better, check, title, "max", note)


def _ms(name: str, title: str = "", check: str | None = None) -> Column:
    return Column(name, MEASURE, "ms", "lower", check, title, "max")


# The run identity of the DESIGN contract, in its order; runs.csv and curves.csv lead with it.
RUN_IDENTITY = (
    "schema_version", "suite", "run_id", "cell_id", "optimizer", "model", "params", "device", "device_name",
    "world_size", "dtype", "seq_len", "batch_size", "seed", "status", "swanbench_version", "torch_version",
)
# The axes that, with the optimizer (and its hyperparameters) and the seed, separate one cell from another:
# two runs that differ in any of them answer different questions and are never pooled or matched.
CELL_AXES = ("model", "device", "dtype", "seq_len", "batch_size", "grad_accum", "world_size", "parallelism",
             "steps", "eval_tokens", "data")
# Of those, what every report table shows; the others are shown where they vary.
ALWAYS_AXES = ("model", "device")

RUN_MEASURES = (
    "param_bytes", "grad_bytes", "optimizer_state_bytes", "peak_allocated_bytes", "peak_reserved_bytes",
    "nvml_peak_bytes", "peak_rss_bytes", "step_transient_bytes", "step_ms", "forward_backward_ms",
    "optimizer_step_ms", "whitening_ms", "tokens_per_s", "final_eval_loss", "final_eval_ppl", "tokens_to_target",
)
RUNS_COLUMNS = (*RUN_IDENTITY, *RUN_MEASURES)
RANKS_COLUMNS = (*RUN_IDENTITY, "rank", *RUN_MEASURES)
CURVE_MEASURES = ("run_id", "step", "tokens", "train_seconds", "train_loss", "eval_loss", "eval_ppl", "lr")
# Curves carry the run's identity (and its cell axes) so a plot needs no join.
CURVES_COLUMNS = (*CURVE_MEASURES, *(c for c in RUN_IDENTITY if c != "run_id"),
                  *(a for a in CELL_AXES if a not in RUN_IDENTITY))
KERNELS_COLUMNS = (
    "operator", "method", "rows", "cols", "dtype", "device", "device_name", "steps", "ms_median",
    "ms_iqr", "flops", "tflops", "peak_bytes", "rel_error",
)
# tuning.csv: one row per tuning trial (`swanbench.tuning`); every tuned hyperparameter follows as a column of
# its own, named as the optimizer names it (`lr`, `adamw_lr`, ...), and `tuned` lists those names.
TUNING_COLUMNS = ("optimizer", "trial_seed", "tokens", "final_eval_loss", "status", "chosen", "at_edge",
                  "edges", "model", "group_id", "run_id", "extension", "budget", "extensions_allowed",
                  "eval_cell_id", "tuned")

CATALOGUE: tuple[Column, ...] = (
    # ---- identity and axes
    Column("schema_version", IDENTITY), Column("suite", IDENTITY, title="suite"),
    Column("run_id", IDENTITY), Column("cell_id", IDENTITY), Column("optimizer", IDENTITY, title="optimizer"),
    Column("model", AXIS, title="model"), Column("params", IDENTITY, "count", title="parameters"),
    Column("device", AXIS, title="device"), Column("device_name", IDENTITY, title="device name"),
    Column("world_size", AXIS, "count", title="ranks"), Column("dtype", AXIS, title="dtype"),
    Column("seq_len", AXIS, "tokens", title="seq"), Column("batch_size", AXIS, "count", title="batch"),
    Column("grad_accum", AXIS, "count", title="grad accum"), Column("parallelism", AXIS, title="parallelism"),
    Column("steps", AXIS, "count", title="steps"), Column("eval_tokens", AXIS, "tokens", title="eval tokens"),
    Column("data", AXIS, title="data"), Column("seed", IDENTITY, title="seed", numeric=True),
    Column("status", IDENTITY, title="status"), Column("swanbench_version", IDENTITY),
    Column("torch_version", IDENTITY), Column("rank", IDENTITY, title="rank"),
    # ---- exact tensor bytes by role
    _bytes("param_bytes", "Parameters", "bytes", better="none"),
    _bytes("param_bytes.*", "Parameters of a group", "bytes", better="none"),
    _bytes("grad_bytes", "Gradients", "bytes"),
    _bytes("optimizer_state_bytes", "Optimizer state", "bytes"),
    _bytes("optimizer_state_bytes.*", "Optimizer state of a group", "bytes"),
    _bytes("optimizer_state_scalar_bytes", "Optimizer state counters (0-dim)"),
    # ---- the allocator and the profiler
    Column("alloc_retries", MEASURE, "count", "lower", "allocator_events", "CUDA allocator retries", "max"),
    Column("oom_count", MEASURE, "count", "lower", "allocator_events", "CUDA OOMs", "max"),
    _bytes("peak_allocated_bytes", "Peak allocated memory (allocator)", "peaks"),
    _bytes("peak_reserved_bytes", "Peak reserved memory (allocator)", "peaks"),
    _bytes("step_transient_bytes", "Transient memory inside optimizer.step()", "peaks"),
    _bytes("*_peak_bytes", "Peak of a memory category (profiler)", "peaks"),
    _bytes("profiled_*_bytes", "Profiled step memory", "peaks"),
    _bytes("profiled_step_peak_bytes", "Peak live tensor memory in a profiled step (profiler)", "peaks"),
    # ---- the process
    _bytes("peak_rss_bytes", "Peak resident memory (RSS, CPU process)", "process",
           note="includes the Python interpreter and libraries"),
    _bytes("nvml_peak_bytes", "Peak process memory (NVML, GPU)", "process"),
    _bytes("nvml_device_peak_bytes", "Peak device memory (NVML, GPU)", "process"),
    _bytes("rss_at_start_bytes", "RSS when the meter started", role=INFO, better=None),
    _bytes("nvml_device_baseline_bytes", "Device memory in use before the run (NVML)", role=INFO, better=None),
    # ---- the machine while the run measured (swanbench.trackers.machine): is a time the optimizer's or the load's?
    Column("load_avg_start", INFO, "", None, None, "Load average (1 min) when the run started", "max",
           "runnable processes; above cpu_count, processes queued for a core"),
    Column("load_avg_end", INFO, "", None, None, "Load average (1 min) when the run ended", "max"),
    Column("cpu_steal_pct", INFO, "%", None, None, "CPU time stolen by the hypervisor during the run", "max"),
    Column("cpu_busy_pct", INFO, "%", None, None, "CPU time not idle during the run (this run included)", "max"),
    Column("cpu_count", INFO, "count", None, None, "CPU cores the OS reports"),
    # ---- where a run's wall time goes before it trains (swanbench.run.worker.StartupClock)
    Column("startup_s", INFO, "s", None, None, "Start-up: process start to the end of the first step", "max"),
    Column("startup_*_s", INFO, "s", None, None, "Start-up phase", "max"),
    Column("run_wall_s", INFO, "s", None, None, "Wall time of the run's process", "max"),
    # ---- time
    _ms("step_ms", "Step time (median)", "times"),
    _ms("forward_backward_ms", "Forward + backward (median)", "times"),
    _ms("optimizer_step_ms", "optimizer.step() (median)", "optimizer_times"),
    _ms("whitening_ms", "Whitening / normalisation inside the step (median)", "optimizer_times"),
    _ms("comm_ms", "Communication inside the step (median)"),
    Column("*_iqr_ms", SPREAD, "ms", None, None, "interquartile range", "max"),
    Column("tokens_per_s", MEASURE, "tokens/s", "higher", "throughput", "Throughput", "min"),
    Column("train_seconds", MEASURE, "s", "lower", None, "Training time", "max", "seconds, eval excluded"),
    _ms("tracker_overhead_ms", "The meter's own bookkeeping per step"),
    Column("tracker_overhead_pct", INFO, "%"),
    # ---- quality
    Column("final_eval_loss", MEASURE, "nats", "lower", "losses", "Final eval loss (token-weighted)"),
    Column("final_eval_loss_galore", MEASURE, "nats", "lower", "losses", "Final eval loss (GaLore-compatible)"),
    Column("final_eval_ppl", MEASURE, "", "lower", "perplexity", "Final eval perplexity (token-weighted)",
           note="lower is better", numeric=True),
    Column("final_eval_ppl_galore", MEASURE, "", "lower", "perplexity",
           "Final eval perplexity (GaLore-compatible)",
           note="the reference script's biased mean, for comparing with published tables", numeric=True),
    Column("tokens_to_target", ANNOTATION, "tokens", "lower", "progress", "Tokens to reach the target perplexity",
           note="empty seeds did not reach it"),
    Column("steps_to_target", ANNOTATION, "count", "lower", None, "Steps to reach the target"),
    Column("seconds_to_target", ANNOTATION, "s", "lower", None, "Training seconds to reach the target perplexity",
           note="eval excluded; empty seeds did not reach it"),
    Column("effective_speedup", ANNOTATION, "x", "higher", None, "Effective speedup over the baseline",
           note="baseline's total tokens / tokens to target; higher is better, 1 = as fast as the baseline"),
    Column("target_eval_loss", ANNOTATION, "nats"), Column("target_run_id", ANNOTATION),
    Column("baseline_tokens", ANNOTATION, "tokens"),
    # ---- curves.csv: one row per eval point
    Column("step", MEASURE, "count", title="step"), Column("tokens", MEASURE, "tokens", title="tokens"),
    Column("train_loss", MEASURE, "nats", "lower", title="train loss"),
    Column("eval_loss", MEASURE, "nats", "lower", title="eval loss (token-weighted)"),
    Column("eval_loss_galore", MEASURE, "nats", "lower", title="eval loss (GaLore-compatible)"),
    Column("eval_ppl", MEASURE, "", "lower", title="eval perplexity", numeric=True),
    Column("eval_ppl_galore", MEASURE, "", "lower", title="eval perplexity (GaLore-compatible)", numeric=True),
    Column("lr", INFO, "", title="learning rate", numeric=True),
    # ---- the estimate
    _bytes("estimate_bytes", "Analytic estimate of the peak (swanbench estimate)", role=ESTIMATE, better=None),
    _bytes("estimate_*_bytes", "Analytic estimate of a part", role=ESTIMATE, better=None),
    Column("unexplained_bytes", ESTIMATE, "bytes", None, None, "Measured peak − estimate", "max",
           "what the analytic model misses"),
    # ---- tuning trials (tuning.csv)
    Column("trial_seed", IDENTITY, title="trial seed"),
    Column("group_id", IDENTITY, title="tuning group",
           note="cell_id of the evaluation cell before tuning: the trials that choose its hyperparameters"),
    Column("chosen", INFO, title="chosen", note="this trial's setting was chosen (lowest mean final eval loss)"),
    Column("at_edge", INFO, title="at grid edge",
           note="the chosen setting sits at the edge of its grid in some hyperparameter, after extensions"),
    Column("edges", INFO, title="hyperparameters at an edge", note="of the chosen setting, comma-separated"),
    Column("extension", INFO, "count", title="extension",
           note="0: a grid point; k: the k-th point added beyond an edge (the edge rule)"),
    Column("budget", INFO, "count", title="tuning budget", note="grid trials per optimizer, the same for every optimizer"),
    Column("extensions_allowed", INFO, "count", title="extensions allowed"),
    Column("eval_cell_id", INFO, title="evaluation cell", note="cell_id of the evaluation cell with the chosen values"),
    Column("tuned", INFO, title="tuned hyperparameters"),
    # ---- reasons
    Column("error", ERROR), Column("*_error", ERROR), Column("measure_errors", ERROR),
)


def column(name: str) -> Column | None:
    """The catalogue entry of a column: its exact entry, else the first family (glob) that matches it."""
    exact = _EXACT.get(name)
    if exact is not None:
        return exact
    return next((c for c in _FAMILIES if c.matches(name)), None)


_EXACT = {c.name: c for c in CATALOGUE if not _is_glob(c.name)}
_FAMILIES = tuple(c for c in CATALOGUE if _is_glob(c.name))


def title(name: str) -> str:
    entry = column(name)
    return entry.title if entry and entry.title else name


def unit(name: str) -> str:
    entry = column(name)
    return entry.unit if entry else ""


def better(name: str) -> str:
    """"lower", "higher" or "none"; columns the catalogue does not know are lower-is-better."""
    entry = column(name)
    return entry.better if entry and entry.better else "lower"


def is_numeric(name: str) -> bool:
    """Whether the catalogue says `name` holds numbers (columns it does not know: no)."""
    entry = column(name)
    return entry is not None and entry.is_numeric


def rank_aggregate(name: str) -> str:
    """How a multi-rank run combines its ranks' values of `name`: "max", "min" or "first"."""
    entry = column(name)
    if entry is not None:
        return entry.ranks
    return "max" if name.endswith(("_bytes", "_ms")) else "first"


def check_classes() -> dict[str, list[str]]:
    """The regression gate's classes and their columns (exact names and families), from the catalogue."""
    classes: dict[str, list[str]] = {}
    for entry in CATALOGUE:
        if entry.check:
            classes.setdefault(entry.check, []).append(entry.name)
    return classes


def directions() -> dict[str, str]:
    """The better direction of every column (and family) that is not lower-is-better."""
    return {c.name: c.better for c in CATALOGUE if c.better not in (None, "lower")}


def cell_axes(columns: Iterable[str]) -> list[str]:
    """The cell axes among `columns`, in catalogue order."""
    present = set(columns)
    return [a for a in CELL_AXES if a in present]


def match_columns(columns: Iterable[str]) -> list[str]:
    """What makes two runs the same question asked of another optimizer: suite, every cell axis, seed."""
    present = set(columns)
    return [c for c in ("suite", *CELL_AXES, "seed") if c in present]
