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
from typing import Sequence

import pandas as pd

from swanbench import __version__, schema
from swanbench.analysis import noise
from swanbench.analysis.kernel_summary import PLAUSIBLE_FRACTION, kernel_summary_parts, kernels_section, machine_section
from swanbench.analysis.markdown import cell_text, fmt_bytes, fmt_number, intish, md_table
from swanbench.analysis.results import (
    ALWAYS_AXES, FIGURES_DIR, MACHINE_FILE, OK, Results, axis_label, baseline_hint, baseline_of,
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


def fmt_diff(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+,.0f} %" if abs(value) >= 1000 else f"{value:+.1f} %"


# Below these a baseline's value is measurement resolution, and a percentage against it means nothing
# (a 12-byte transient against 110 kB is "+921,633 %"): bytes under one 4 KiB page, times under 10 µs.
RESOLUTION = {"bytes": 4096.0, "ms": 0.01}


def diff_cell(kind: str, mean: float, base: float) -> str:
    """Diff % against the baseline's mean, or why there is none (a baseline below resolution)."""
    floor = RESOLUTION.get(kind)
    if floor is not None and math.isfinite(base) and math.isfinite(mean) and abs(base) < floor:
        shown = fmt_bytes(base) if kind == "bytes" else f"{fmt_number(base)} ms"
        return f"n/a: baseline below resolution ({shown})"
    return fmt_diff(diff_percent(mean, base))


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
    rows, reasons = [], []
    for i, s in enumerate(summaries):
        base = base_means.get(s.key, math.nan)
        diff = "baseline" if s.optimizer == baseline else diff_cell(measure.kind, s.mean, base)
        verdict = _noise(runs, measure.column, axes, s, baseline) if s.optimizer != baseline else None
        if verdict is not None and verdict.noisy and s.n:
            diff = "too noisy to judge"
            reasons.append(f"{', '.join(map(str, s.key))}, {s.optimizer}: {verdict.reason}")
        spread = "–" if not math.isfinite(s.spread) else fmt_number(s.spread / scale)
        cells = [axis_label(a, v) if a not in ALWAYS_AXES else str(v) for a, v in zip(axes, s.key)]
        extra = [fmt_number(iqrs[i].mean / scale) if iqrs[i].n else "n/a"] if iqrs else []
        rows.append([*cells, s.optimizer, n_text(s), mean_text(s, scale), spread, *extra, diff])
    unit_text = f" [{unit}]" if unit else ""
    iqr_header = [f"IQR within run{unit_text}"] if iqrs else []
    header = [*axes, "optimizer", "n", f"mean{unit_text}", f"spread{unit_text}", *iqr_header,
              f"Diff % vs {baseline}"]
    note = f": {measure.note}" if measure.note else ""
    withheld = "".join(f"\n- {r}" for r in reasons)
    withheld = f"\nDiff % withheld where the runs' own spread hides it (as `swanbench check` judges):{withheld}\n" \
        if reasons else ""
    return f"### {measure.title}{unit_text}\n\n`{measure.column}`{note}\n\n{md_table(header, rows)}\n{withheld}"


def _noise(runs: pd.DataFrame, column: str, axes: Sequence[str], s: Summary, baseline: str):
    """The gate's noise judgement of this summary's runs against the baseline's in the same cell."""
    cell = select(runs, axes, s.key)
    return noise.judge(column, cell[cell["optimizer"] == s.optimizer], cell[cell["optimizer"] == baseline],
                       s.optimizer, baseline)


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
        columns.append((column, title, is_bytes, summarise(runs, values, axes, optimizers)))
    if not columns:
        return ""
    rows, noisy = [], False
    for i, first in enumerate(columns[0][3]):
        cells = [str(v) if a in ALWAYS_AXES else axis_label(a, v) for a, v in zip(axes, first.key)]
        glance = [_glance_cell(runs, axes, column, summaries, i, is_bytes, baseline)
                  for column, _, is_bytes, summaries in columns]
        noisy |= any(g.endswith("(too noisy)") for g in glance)
        rows.append([*cells, first.optimizer, n_text(first), *glance])
    header = [*axes, "optimizer", "n", *(title for _, title, _, _ in columns)]
    peak_note = f" Peak memory is, per device, {'; '.join(notes)}." if notes else ""
    noisy_note = (" \"(too noisy)\": the runs' own spread hides the difference (the times' sections below say "
                  "by how much)." if noisy else "")
    return (f"### At a glance\n\nMean over ok seeds, (Diff % vs {baseline}) in brackets.{peak_note}{noisy_note}"
            "\n\n" + md_table(header, rows) + "\n")


def _glance_cell(runs: pd.DataFrame, axes: Sequence[str], column: str, summaries: list[Summary], i: int,
                 is_bytes: bool, baseline: str) -> str:
    s = summaries[i]
    if s.n_ok == 0 or s.n == 0:
        return mean_text(s, 1.0)
    text = fmt_bytes(s.mean) if is_bytes else fmt_number(s.mean)
    if s.optimizer != baseline:
        base = next((b.mean for b in summaries if b.key == s.key and b.optimizer == baseline), math.nan)
        verdict = _noise(runs, column, axes, s, baseline)
        diff = "too noisy" if verdict is not None and verdict.noisy else diff_cell(
            "bytes" if is_bytes else "plain", s.mean, base)
        text += f" ({diff})"
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
        reached = (f"{cell_text(r.get('n_reached'), intish)}/{cell_text(r.get('n_seeds'), intish)}"
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
             f"tables alone ({', '.join(tables)}; no log is read). The environment is at the end.\n",
             "## Command\n",
             f"```bash\n{command}\n```\n" if command else "Not recorded (no command.txt, no command in env.json).\n"]
    parts += [f"> Note: {n}\n" for n in results.notes]
    if runs is not None and len(runs):
        parts += _runs_parts(runs, baseline, _verdict_parts(results.results_dir, runs))
    elif runs is not None:
        parts += ["## Runs\n", "runs.csv has no rows: no run has finished yet.\n"]
    parts += tuning_section(results.results_dir)
    if results.kernels is not None and len(results.kernels):
        parts += ["## Operator micro-benchmarks (kernels.csv)\n", *kernel_summary_parts(results),
                  "### Every case\n",
                  "Median (and IQR) over the timed calls after warm-up; `frac_of_*` compare the achieved rate "
                  "with the machine's limits measured in the same run (n/a where that limit was measured at too "
                  f"small a size to compare with: above {PLAUSIBLE_FRACTION:.0%} of it).\n"]
        if results.machine is not None and len(results.machine):
            parts += ["### Machine limits (machine.csv)\n", machine_section(results.machine)]
        parts += [kernels_section(results.kernels)]
    figures = figures_section(results.results_dir)
    if figures:
        parts += ["## Figures\n", figures]
    parts += ["## Environment\n", environment_section(results, envs)]
    return "\n".join(parts)


def _runs_parts(runs: pd.DataFrame, baseline: str, verdicts: list[str]) -> list[str]:
    axes = cell_axes(runs)
    resolved = resolve_baseline(runs, baseline)
    optimizers = optimizer_order(runs["optimizer"].unique(), canonical_name(baseline))
    parts = ["## Runs\n", runs_section(runs, axes)]
    load = noise.load_note(runs)
    if load:
        parts.append(f"The machine while the runs measured: {load}.\n")
    parts += verdicts
    parts.append(f"## Key figures per cell (baseline: {baseline})\n")
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


def _verdict_parts(results_dir: Path, runs: pd.DataFrame | None = None) -> list[str]:
    """The verdicts table, when swanbench.analysis.quality has written verdicts.csv beside the tables."""
    path = Path(results_dir) / VERDICTS_FILE
    if not path.is_file():
        return []
    verdicts = read_table(path)
    if verdicts.empty:
        return []
    return ["## Verdicts (verdicts.csv)\n",
            "Written by `swanbench.analysis.quality` from the same tables: paired by seed against the baseline.\n",
            verdicts_section(verdicts), *undecided_hint(verdicts, runs)]


def undecided_hint(verdicts: pd.DataFrame, runs: pd.DataFrame | None) -> list[str]:
    """Where a verdict is inconclusive because one seed cannot decide: the command that can."""
    seeds = pd.to_numeric(verdicts.get("n_seeds", pd.Series(dtype=float)), errors="coerce")
    texts = verdicts.reindex(columns=["final_loss_verdict", "sooner_verdict"]).astype(str)
    inconclusive = texts.apply(lambda col: col.str.contains("inconclusive")).any(axis=1)
    if not (inconclusive & (seeds < 2)).any():
        return []
    suite = ""
    if runs is not None and "suite" in runs.columns and runs["suite"].nunique() == 1:
        suite = str(runs["suite"].iloc[0])
    run = f"swanbench run {suite or 'SUITE'} --set 'matrix.seed=[0,1,2]'"
    return [f"One seed cannot decide a verdict (the rule needs every seed to agree and an interval, so at least "
            f"two seeds; three are the practical minimum). Rerun with three seeds: `{run}` (the finished seed 0 is "
            f"kept), or run the shipped `swanbench run token-efficiency` (nano, 3 seeds, each optimizer's tuned lr).\n"]


def write_report(results_dir: Path, baseline: str | None = None, command: str | None = None) -> Path:
    """Write `results_dir/report.md` from the tables and return its path (atomically replaced)."""
    results = load_results(Path(results_dir))
    text = build_report(results, baseline=baseline, command=command)
    path = Path(results_dir) / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
