"""Summaries of a results directory and its markdown report, from the tables alone.

Reads the tables through `swanbench.analysis.results` (never a log), groups runs into cells (optimizer x
model x device, plus whichever other cell axes of `swanbench.schema` vary: dtype, seq_len, batch_size,
parallelism, ...), counts seeds and summarises every key measure as n, mean and spread, with a Diff %
against the baseline optimizer (the suite's declared `baseline`, adamw by default). The figures
(`swanbench.analysis.figures`) draw from the same helpers, so a figure and the report never disagree about
which runs count.

Conventions, stated once:
- a run counts towards a mean only when its `status` is `ok`; other runs are listed as what they are
  (oom, diverged, timeout, crashed), never silently dropped;
- spread = sample standard deviation over seeds (ddof=1); with one seed there is no spread;
- Diff % = (mean - baseline mean) / baseline mean x 100 within the same cell (same model, device, ...);
- bytes are shown in KiB, MiB (1024^2) or GiB (1024^3), times in ms, as the column names say.

Also read when present: `machine.csv` (kernel suites' measured limits), `verdicts.csv`
(swanbench.analysis.quality) and the `env.json` records.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from swanbench import __version__, schema
from swanbench.analysis.results import (
    ALWAYS_AXES, FIGURES_DIR, MACHINE_FILE, MIB, OK, Results, axis_label, baseline_hint, baseline_of,
    bytes_unit, canonical_name, cell_axes, group_keys, load_results, numeric, optimizer_order, outcome_text,
    peak_column, read_envs, resolve_baseline, select, status_text, with_targets,
)
from swanbench.analysis.tuning import tuning_section
from swanbench.schema import CURVES_FILE, KERNELS_FILE, RUNS_FILE, TUNING_FILE, VERDICTS_FILE
from swanbench.tables import read_table

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"


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


_KIND_OF_UNIT = {"bytes": "bytes", "ms": "ms", "tokens": "count", "tokens/s": "count", "count": "count"}


def measure(column: str) -> Measure:
    """The report's view of a column: title, unit and note from the schema catalogue."""
    entry = schema.column(column)
    unit = entry.unit if entry else ""
    note = entry.note if entry else ""
    if entry is not None and entry.better == "higher" and "higher" not in note:
        note = f"higher is better{'; ' + note if note else ''}"
    return Measure(column, schema.title(column), _KIND_OF_UNIT.get(unit, "plain"), note)


# The key figures the report shows, in order (titles, units and notes come from the catalogue).
REPORT_COLUMNS = (
    "final_eval_ppl", "final_eval_ppl_galore", "tokens_to_target", "seconds_to_target", "effective_speedup",
    "peak_allocated_bytes", "profiled_step_peak_bytes", "estimate_bytes", "unexplained_bytes", "nvml_peak_bytes",
    "peak_rss_bytes", "optimizer_state_bytes", "step_transient_bytes", "step_ms", "forward_backward_ms",
    "optimizer_step_ms", "whitening_ms", "tokens_per_s", "train_seconds",
)
MEASURES = tuple(measure(c) for c in REPORT_COLUMNS)


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
    """verdicts.csv (swanbench.analysis.quality): per optimizer, does it beat the baseline, and does it get there sooner?"""
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


def build_report(results: Results, baseline: str | None = None, command: str | None = None) -> str:
    """The markdown text of the report of `results` (baseline: the suite's declared one unless given)."""
    baseline = baseline_of(results.runs, baseline)
    resolved = resolve_baseline(results.runs, baseline)
    results = with_targets(results, resolved or baseline)
    envs = read_envs(results.results_dir)
    command = command or find_command(results.results_dir, envs)
    runs = results.runs
    suites = sorted({str(s) for f in (runs, results.kernels) if f is not None and "suite" in f.columns
                     for s in f["suite"].dropna()})
    title = ", ".join(suites) or results.results_dir.name
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tables = [f for f in (RUNS_FILE, CURVES_FILE, KERNELS_FILE, MACHINE_FILE, VERDICTS_FILE, TUNING_FILE)
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
    parts += tuning_section(results.results_dir)
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
    """The verdicts table, when swanbench.analysis.quality has written verdicts.csv beside the tables."""
    path = Path(results_dir) / VERDICTS_FILE
    if not path.is_file():
        return []
    verdicts = read_table(path)
    if verdicts.empty:
        return []
    return ["## Verdicts (verdicts.csv)\n",
            "Written by `swanbench.analysis.quality` from the same tables: paired by seed against the baseline.\n",
            verdicts_section(verdicts)]


def write_report(results_dir: Path, baseline: str | None = None, command: str | None = None) -> Path:
    """Write `results_dir/report.md` from the tables and return its path (atomically replaced)."""
    results = load_results(Path(results_dir))
    text = build_report(results, baseline=baseline, command=command)
    path = Path(results_dir) / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
