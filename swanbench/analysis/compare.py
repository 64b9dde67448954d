"""The GPU axis across machines: several result sets of one suite, each made on its own device, side by side.

One machine has one kind of device, so the design's optimizer x model x device matrix is assembled from
result sets made on different machines (the CPU set, an H100 set, an H200 set under `results/<device>/`).
`swanbench compare A B ...` reads them, checks that they ask the same question (`comparability`: the same
suite, cells in common; what differs besides the device is said, and cells only some sets ran are listed),
and writes a comparison: `compare.md` (every common cell and optimizer, each measure per device, with the
ratio to the first set) and `figures/compare.png` (`swanbench.analysis.figures.compare`: the measures as
bars coloured by device, one group per optimizer; times too noisy to judge are greyed, as `swanbench check`
judges them), with each device's own limits beside it (device memory and cores or threads from env.json;
the matmul rate and copy bandwidth from a kernel suite's `machine.csv` when the set holds one).

A device is named by its `device_name`, plus what else tells two sets apart where the names are equal
(torch threads, then the directory), so two CPU sets made with 1 and 2 threads compare as two devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from swanbench.analysis import noise
from swanbench.analysis.results import (GIB, OK, Results, canonical_name, load_results, numeric, optimizer_order,
                                        peak_column, read_envs)
from swanbench.schema import CELL_AXES
from swanbench.tables import TableError

COMPARE_FILE = "compare.md"
# What the comparison shows, per device: (column, title, unit scale, unit).
MEASURES = (("step_ms", "step time (median)", 1.0, "ms"), ("tokens_per_s", "throughput", 1.0, "tokens/s"),
            ("peak", "peak memory", GIB, "GiB"), ("final_eval_ppl", "final eval perplexity", 1.0, ""))
# The device colours: none is an optimizer's (a tick label's colour says the optimizer).
DEVICE_COLORS = ("#525252", "#9e9ac8", "#fdae6b", "#66c2a5", "#e7969c", "#bcbddc")
# Axes that make two runs the same question on another device (the device itself excluded).
MATCH_AXES = tuple(a for a in CELL_AXES if a != "device")


class CompareError(ValueError):
    """Result sets that cannot be compared (one line)."""


@dataclass
class ResultSet:
    """One results directory, named by the device it was made on."""

    path: Path
    results: Results
    envs: list[dict]
    label: str = ""

    @property
    def runs(self) -> pd.DataFrame:
        return self.results.runs

    def first(self, column: str) -> str | None:
        """The value of `column` the set's runs (or env.json records) share, as text, or None."""
        values = set()
        if self.runs is not None and column in self.runs.columns:
            values |= {_text(v) for v in self.runs[column].dropna()}
        values |= {_text(e[column]) for e in self.envs if e.get(column) is not None}
        return ", ".join(sorted(values)) if values else None


@dataclass
class Comparison:
    sets: list[ResultSet]
    differences: list[str] = field(default_factory=list)  # facts besides the device (versions, threads, cells)
    common: pd.DataFrame | None = None  # the cells (MATCH_AXES + optimizer + seed) every set ran


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load_sets(paths: Sequence[Path]) -> list[ResultSet]:
    """Each results directory, with a device label unique among them."""
    if len(paths) < 2:
        raise CompareError("compare needs at least two results directories")
    sets = []
    for path in paths:
        try:
            results = load_results(Path(path))
        except TableError as exc:
            raise CompareError(str(exc)) from None
        if results.runs is None or results.runs.empty:
            raise CompareError(f"{path}: no runs.csv rows to compare")
        sets.append(ResultSet(Path(path), results, read_envs(Path(path))))
    _label(sets)
    return sets


def _label(sets: list[ResultSet]) -> None:
    """device_name; where two sets share it, the torch threads too; where still equal, the directory."""
    for s in sets:
        s.label = s.first("device_name") or s.first("device") or s.path.name
    if len({s.label for s in sets}) < len(sets):
        for s in sets:
            threads = s.first("torch_threads")
            if threads:
                s.label += f" · {threads} thread{'s' if threads != '1' else ''}"
    if len({s.label for s in sets}) < len(sets):
        for s in sets:
            s.label += f" ({s.path.name})"


def _cells(runs: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("suite", *MATCH_AXES, "optimizer", "seed") if c in runs.columns]
    return runs.loc[runs["status"] == OK, keys].astype(str).drop_duplicates()


def comparability(sets: list[ResultSet]) -> Comparison:
    """Same suite and common cells, or CompareError; the differences besides the device, as lines."""
    suites = {s.label: s.first("suite") for s in sets}
    if len(set(suites.values())) > 1:
        raise CompareError("not comparable: the sets ran different suites ("
                           + "; ".join(f"{k}: {v}" for k, v in suites.items()) + ")")
    cells = [_cells(s.runs) for s in sets]
    keys = [c for c in cells[0].columns if all(c in other.columns for other in cells)]
    common = cells[0][keys]
    for other in cells[1:]:
        common = common.merge(other[keys], on=keys)
    if common.empty:
        raise CompareError("not comparable: no cell (suite, cell axes besides the device, optimizer, seed) ran ok "
                           "in every set")
    comparison = Comparison(sets, common=common)
    for s, mine in zip(sets, cells):
        extra = len(mine[keys].merge(common, on=keys, how="left", indicator=True).query("_merge == 'left_only'"))
        if extra:
            comparison.differences.append(f"{s.label}: {extra} ok run(s) no other set has (left out)")
    for column in ("device_name", "torch_threads", "torch_version", "git_rev", "cpu_count", "native_kernels",
                   "cuda_version"):
        values = {s.label: s.first(column) for s in sets}
        if len(set(values.values())) > 1:
            comparison.differences.append(f"{column} differs: " + "; ".join(f"{k}: {v}" for k, v in values.items()))
    if len({s.first("device_name") for s in sets}) == 1 and len({s.first("torch_threads") for s in sets}) == 1:
        comparison.differences.append("every set was made on the same device with the same threads: this compares "
                                      "repeats, not devices")
    return comparison


def combined(comparison: Comparison) -> pd.DataFrame:
    """The common ok runs of every set, one frame, with `machine` (the set's label) and `peak` columns."""
    frames = []
    for s in comparison.sets:
        runs = _restrict(s.runs[s.runs["status"] == OK].copy(), comparison.common)
        peak = peak_column(runs)
        runs["peak"] = numeric(runs, peak[0]) if peak else math.nan
        runs["peak_source"] = peak[1] if peak else ""
        runs["machine"] = s.label
        frames.append(runs)
    return pd.concat(frames, ignore_index=True)


def _restrict(runs: pd.DataFrame, common: pd.DataFrame) -> pd.DataFrame:
    keys = list(common.columns)
    mask = runs[keys].astype(str).apply(tuple, axis=1).isin(set(common.apply(tuple, axis=1)))
    return runs[mask]


def device_limits(s: ResultSet) -> list[str]:
    """What the set records about its device's limits: memory and cores/threads (env.json), and the matmul
    rate and copy bandwidth measured in the same run (machine.csv of a kernel suite)."""
    lines = []
    memory = s.first("device_memory_bytes")
    if memory:
        try:
            lines.append(f"memory {float(memory.split(',')[0]) / GIB:.1f} GiB")
        except ValueError:
            pass
    for column, text in (("cpu_count", "core"), ("torch_threads", "torch thread")):
        value = s.first(column)
        if value:
            lines.append(f"{value} {text}{'' if value == '1' else 's'}")
    machine = s.results.machine
    if machine is not None and "measure" in machine.columns:
        for (measure, dtype), group in machine.groupby(["measure", "dtype"], sort=True):
            for column, unit in (("tflops", "TFLOP/s"), ("gbps", "GB/s")):
                best = numeric(group, column).max()
                if math.isfinite(best) and best > 0:
                    lines.append(f"{measure} {dtype}: {best:.3g} {unit} (measured)")
    load = noise.load_note(s.runs)
    if load:
        lines.append(load)
    return lines


# ---------------------------------------------------------------------------------------------------------
# Writing


def cell_columns(frame: pd.DataFrame) -> list[str]:
    return [a for a in MATCH_AXES if a in frame.columns and frame[a].astype(str).nunique() > 1] or \
        [a for a in ("model",) if a in frame.columns]


def with_byte_unit(frame: pd.DataFrame) -> tuple:
    """MEASURES with the peak memory in GiB, MiB or KiB, whichever suits the largest peak."""
    from swanbench.analysis.results import bytes_unit

    top = numeric(frame, "peak").max()
    scale, unit = bytes_unit(top if math.isfinite(top) else 0.0)
    return tuple((c, t, scale, unit) if c == "peak" else (c, t, s, u) for c, t, s, u in MEASURES)


def comparison_table(frame: pd.DataFrame, machines: list[str], baseline: str) -> pd.DataFrame:
    """Per (cell, optimizer, measure): the mean over ok seeds on each device, and the ratio to the first."""
    cells = cell_columns(frame)
    rows = []
    order = optimizer_order(frame["optimizer"].unique(), baseline)
    measures = with_byte_unit(frame)
    for key, group in frame.groupby(cells, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for opt in order:
            mine = group[group["optimizer"] == opt]
            if mine.empty:
                continue
            for column, title, scale, unit in measures:
                means = [numeric(mine[mine["machine"] == m], column).mean() / scale for m in machines]
                if not any(math.isfinite(v) for v in means):
                    continue
                row = dict(zip(cells, key), optimizer=opt, measure=f"{title}{f' [{unit}]' if unit else ''}")
                row.update({m: v for m, v in zip(machines, means)})
                for m, v in zip(machines[1:], means[1:]):
                    row[f"{m} ÷ first"] = v / means[0] if means[0] and math.isfinite(v) else math.nan
                rows.append(row)
    return pd.DataFrame(rows)


def render_markdown(comparison: Comparison, table: pd.DataFrame) -> str:
    from swanbench.analysis.markdown import fmt_number, md_table

    machines = [s.label for s in comparison.sets]
    lines = [f"# swanbench comparison: {comparison.sets[0].first('suite')} on {len(machines)} devices\n",
             "Sets: " + "; ".join(f"`{s.path}` = **{s.label}**" for s in comparison.sets) + ".\n",
             "## What differs besides the device\n",
             "\n".join(f"- {d}" for d in comparison.differences) or "Nothing recorded differs.", "",
             "## Each device's limits\n",
             "\n".join(f"- **{s.label}**: " + ("; ".join(device_limits(s)) or "none recorded")
                       for s in comparison.sets), "",
             "## Measures per device (mean over ok seeds of the cells every set ran)\n"]
    header = list(table.columns)
    body = [[fmt_number(v) if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines.append(md_table(header, body))
    return "\n".join(lines) + "\n"


def compare(paths: Sequence[Path], out_dir: Path, baseline: str | None = None
            ) -> tuple[Comparison, pd.DataFrame, str, Path]:
    """Check and tabulate the comparison of several result sets: (comparison, the combined runs, the
    baseline, compare.md written into `out_dir`). `swanbench.analysis.figures.compare.draw_compare` draws it."""
    from swanbench.analysis.results import baseline_of

    sets = load_sets(paths)
    comparison = comparability(sets)
    frame = combined(comparison)
    base = canonical_name(baseline_of(sets[0].runs, baseline))
    table = comparison_table(frame, [s.label for s in sets], base)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / COMPARE_FILE
    path.write_text(render_markdown(comparison, table))
    return comparison, frame, base, path
