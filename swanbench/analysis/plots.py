"""Figures of a results directory, drawn from its tables alone (runs.csv, curves.csv, kernels.csv).

Five figures, each written as PNG (screens) and SVG or PDF (papers) under `RESULTS/figures/`:

- `memory`: where the memory goes, stacked by role, per optimizer, faceted by model and device;
- `time`: the step time split into forward+backward, optimizer step and whitening;
- `kernels`: operator time and achieved rate against matrix size (log-log), with the machine's measured
  matmul rate (and copy bandwidth) drawn as the limit;
- `perplexity`: eval perplexity against tokens and against training seconds, mean over seeds with a
  min-max band, the baseline's final perplexity and each optimizer's tokens-to-target marked;
- `pareto`: peak memory against final perplexity, per model, with the non-dominated front.

A figure whose data is absent is skipped with a logged reason, never drawn empty. Every optimizer has
one colour in every figure (a fixed mapping, then a fallback cycle over the unknown names in sorted
order). Matplotlib is used through `Figure` objects with the Agg canvas, never pyplot, so drawing
touches no global state and leaks no windows.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from swanbench.analysis.results import (
    ALWAYS_AXES, FIGURES_DIR, OK, OPTIONAL_AXES, Results, axis_label, baseline_of, bytes_unit, canonical_name,
    group_keys, load_results, model_order, numeric, optimizer_order, outcome_text, peak_column, resolve_baseline,
    select, with_targets,
)

log = logging.getLogger(__name__)

# One colour per optimizer in every figure: its registry entry's (`OptimizerInfo.color`). Unknown optimizers get these in sorted-name order, so the mapping is the same in every figure of a set.
FALLBACK_COLORS = ("#ff7f0e", "#17becf", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
                   "#ffbb78", "#393b79")

# Colour of each memory role, in stacking order (bottom to top), and of each step-time segment.
ROLE_COLORS = {
    "parameters": "#4c72b0", "gradients": "#55a868", "optimizer state": "#c44e52",
    "activations (profiler)": "#8172b2", "other (derived)": "#d9d9d9", "transient in step": "#ccb974",
}
TIME_COLORS = {"forward + backward": "#4c72b0", "optimizer step (excl. whitening)": "#dd8452",
               "whitening / normalisation": "#c44e52", "step (not split)": "#bbbbbb"}
VARIANT_STYLES = ("-", "--", ":", "-.")
# Kernel operators: a colour map per operator family, a shade and a marker per method.
OPERATOR_CMAPS = {"grad_whiten": "Reds", "whiten_exact": "Greys", "sr_sinkhorn": "Greens",
                  "muon_quintic": "YlOrBr", "grad_norm": "Purples"}
FALLBACK_CMAPS = ("Blues", "Oranges", "PuRd", "BuGn", "Greys")
METHOD_MARKERS = ("o", "s", "D", "v", "P", "X", "<", ">")
VARIANT_MARKERS = ("o", "s", "^", "D")
# The measured peak drawn over each memory bar; its style says which measurement it is.
PEAK_STYLES = {"peak_allocated_bytes": "-", "profiled_step_peak_bytes": "-", "nvml_peak_bytes": "--",
               "peak_rss_bytes": ":"}
MACHINE_OPERATORS = ("matmul", "copy")
FORMATS = ("png", "svg", "pdf")
PNG_DPI = 150
PANEL_W, PANEL_H = 3.6, 3.0  # inches per facet
MIN_WIDTH = 7.5  # inches
BYTES_NOTE = "KiB = 1024 bytes, MiB = 1024² bytes, GiB = 1024³ bytes"


class SkipFigure(Exception):
    """Raised by a figure function when the tables do not hold what it draws; the message says why."""


@dataclass
class FigureSet:
    """What `draw_figures` wrote, and why each figure it did not write was skipped."""

    paths: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class Context:
    """Everything a figure function needs: the tables, the colour of every optimizer, the baseline."""

    results: Results
    colors: dict[str, str]
    baseline: str


# ---------------------------------------------------------------------------------------------------------
# Colours, series and facets


def optimizer_colors(names: Sequence[str]) -> dict[str, str]:
    """Colour of each optimizer: its registry entry's, then the fallback cycle over unknown names, sorted."""
    import optimizers

    registered = set(optimizers.registered())
    colors = {n: optimizers.info(canonical_name(n)).color for n in names if canonical_name(n) in registered}
    colors = {n: c for n, c in colors.items() if c}
    unknown = sorted({str(n) for n in names} - set(colors))
    for i, name in enumerate(unknown):
        colors[name] = FALLBACK_COLORS[i % len(FALLBACK_COLORS)]
    return colors


def variant_axes(frame: pd.DataFrame) -> list[str]:
    """Axes besides model and device that vary: they split one optimizer into several series."""
    return [a for a in OPTIONAL_AXES if a in frame.columns and frame[a].nunique(dropna=False) > 1]


@dataclass(frozen=True)
class Series:
    """One bar or line: an optimizer, split further by the axes that vary (dtype, batch size, ...)."""

    label: str
    optimizer: str
    axes: tuple[str, ...] = ()
    key: tuple = ()
    variant: int = 0  # variants of one optimizer share its colour and differ in line style and marker

    @property
    def linestyle(self) -> str:
        return VARIANT_STYLES[self.variant % len(VARIANT_STYLES)]

    @property
    def marker(self) -> str:
        return VARIANT_MARKERS[self.variant % len(VARIANT_MARKERS)]


def series_of(frame: pd.DataFrame, baseline: str) -> list[Series]:
    """Every series of `frame`, in canonical optimizer order. Computed over a whole table, so that each
    panel shows every series and one without a run there reads as missing, not as an absent bar."""
    axes = tuple(variant_axes(frame))
    variants = group_keys(frame, axes) if axes else [()]
    out = []
    for opt in optimizer_order(frame["optimizer"].unique(), baseline):
        rows = frame[frame["optimizer"] == opt]
        for key in (group_keys(rows, axes) if axes else [()]):
            label = " · ".join([opt, *(axis_label(a, v) for a, v in zip(axes, key))])
            out.append(Series(label, opt, axes, tuple(key), variants.index(key)))
    return out


def series_rows(frame: pd.DataFrame, series: Series) -> pd.DataFrame:
    """The rows of `frame` that belong to `series`."""
    rows = frame[frame["optimizer"] == series.optimizer]
    return select(rows, series.axes, series.key) if series.axes else rows


def facet_grid(frame: pd.DataFrame, panel: tuple[float, float] = (PANEL_W, PANEL_H)
               ) -> tuple[Figure, np.ndarray, list[str], list[str]]:
    """A figure with one panel per (device row, model column), constrained layout."""
    models = model_order(frame)
    devices = sorted(str(d) for d in frame["device"].unique())
    # A floor on the width: one panel alone must still fit the title and legend.
    fig = Figure(figsize=(max(panel[0] * len(models), MIN_WIDTH), panel[1] * len(devices) + 0.9),
                 layout="constrained")
    axes = fig.subplots(len(devices), len(models), squeeze=False)
    return fig, axes, models, devices


def facet_rows(frame: pd.DataFrame, model: str, device: str) -> pd.DataFrame:
    return frame[(frame["model"].astype(str) == model) & (frame["device"].astype(str) == device)]


def empty_panel(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


def color_tick_labels(ax, labels: Sequence[str], optimizers: Sequence[str], colors: dict[str, str]) -> None:
    """Category tick labels in their optimizer's colour, rotated when there are many."""
    # Fixed limits: a slot holding only a status note (no bar) must not fall off the panel's edge, and one
    # or two bars keep a bar's width instead of filling the panel.
    center, half = (len(labels) - 1) / 2, max(len(labels), 3) / 2 + 0.1
    ax.set_xlim(center - half, center + half)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center",
                       fontsize=8)
    for tick, opt in zip(ax.get_xticklabels(), optimizers):
        tick.set_color(colors.get(opt, "black"))
        tick.set_fontweight("bold")


def mean_ok(rows: pd.DataFrame, column: str) -> float:
    """Mean of `column` over the ok runs of `rows` (NaN if none has a value)."""
    values = numeric(rows[rows["status"] == OK], column).dropna()
    return float(values.mean()) if len(values) else math.nan


def std_ok(rows: pd.DataFrame, column: str) -> float:
    """Sample std over ok seeds (ddof=1); NaN with fewer than two."""
    values = numeric(rows[rows["status"] == OK], column).dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def failure_text(rows: pd.DataFrame) -> str:
    """`oom`, `1 oom, 1 timeout`, or `missing` when there is no run at all."""
    return outcome_text(Counter(rows["status"]))


def runs_or_skip(ctx: Context, needed: Sequence[str]) -> pd.DataFrame:
    """runs.csv, or SkipFigure if it is absent or none of its ok runs has any of `needed`."""
    runs = ctx.results.runs
    if runs is None or runs.empty:
        raise SkipFigure("no runs.csv" if runs is None else "runs.csv has no rows")
    ok = runs[runs["status"] == OK]
    if not any(numeric(ok, c).notna().any() for c in needed):
        raise SkipFigure(f"no ok run has any of {', '.join(needed)}")
    return runs


# ---------------------------------------------------------------------------------------------------------
# Memory: stacked bars by role


def memory_stack(rows: pd.DataFrame, peak: tuple[str, str] | None) -> tuple[dict[str, float], float]:
    """(role -> mean bytes over ok seeds, mean measured peak) for one bar.

    `activations (profiler)` comes from `activation_peak_bytes` when measured; whatever the measured peak
    holds beyond the stacked roles (temporaries, autograd buffers, or activations when the profiler gave
    none) is `other (derived)` = peak - the stacked roles (>= 0), so a bar reaches the measured peak and
    its remainder is labelled as derived, not measured.
    """
    roles = {"parameters": mean_ok(rows, "param_bytes"), "gradients": mean_ok(rows, "grad_bytes"),
             "optimizer state": mean_ok(rows, "optimizer_state_bytes")}
    transient = mean_ok(rows, "step_transient_bytes")
    peak_bytes = mean_ok(rows, peak[0]) if peak else math.nan
    activations = mean_ok(rows, "activation_peak_bytes")
    if math.isfinite(activations):
        roles["activations (profiler)"] = activations
    if math.isfinite(peak_bytes):
        known = sum(v for v in (*roles.values(), transient) if math.isfinite(v))
        if peak_bytes > known or "activations (profiler)" not in roles:
            roles["other (derived)"] = max(peak_bytes - known, 0.0)
    roles["transient in step"] = transient
    return {k: v for k, v in roles.items() if math.isfinite(v)}, peak_bytes


def plot_memory(ctx: Context) -> Figure:
    """Stacked bars of memory by role per optimizer, one panel per (model, device), measured peak marked."""
    runs = runs_or_skip(ctx, ["param_bytes", "optimizer_state_bytes", "peak_allocated_bytes", "peak_rss_bytes",
                              "nvml_peak_bytes"])
    fig, axes, models, devices = facet_grid(runs)
    series = series_of(runs, ctx.baseline)
    used_roles: set[str] = set()
    peak_labels: set[tuple[str, str]] = set()
    for r, device in enumerate(devices):
        for c, model in enumerate(models):
            frame = facet_rows(runs, model, device)
            peak = peak_column(frame[frame["status"] == OK])
            used = _memory_panel(axes[r, c], frame, series, peak, ctx)
            used_roles |= used
            if peak and used:
                peak_labels.add(peak)
            axes[r, c].set_title(f"{model} · {device}", fontsize=10)
    handles = [Patch(facecolor=ROLE_COLORS[k], edgecolor="#555555", hatch="//" if k == "other (derived)" else "",
                     label=k) for k in ROLE_COLORS if k in used_roles]
    handles += [Line2D([], [], color="black", linewidth=2, linestyle=PEAK_STYLES[column], label=f"measured {label}")
                for column, label in sorted(peak_labels)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    derived = ("other (derived) = measured peak − the roles stacked below it\n"
               if "other (derived)" in used_roles else "")
    fig.suptitle(f"Memory by role, mean over ok seeds\n{derived}{BYTES_NOTE}", fontsize=9)
    return fig


def _memory_panel(ax, frame: pd.DataFrame, series: list[Series], peak: tuple[str, str] | None, ctx: Context
                  ) -> set[str]:
    if frame.empty:
        empty_panel(ax, "no runs")
        return set()
    stacks = [memory_stack(series_rows(frame, s), peak) for s in series]
    top = max([sum(s.values()) for s, _ in stacks] + [p for _, p in stacks if math.isfinite(p)] + [1.0])
    scale, unit = bytes_unit(top)
    used: set[str] = set()
    for x, (s, (roles, peak_bytes)) in enumerate(zip(series, stacks)):
        rows = series_rows(frame, s)
        if not (rows["status"] == OK).any() or not roles:
            _bar_note(ax, x, failure_text(rows) if not (rows["status"] == OK).any() else "n/a", top / scale)
            continue
        bottom = 0.0
        for role, value in roles.items():
            ax.bar(x, value / scale, bottom=bottom, color=ROLE_COLORS[role], edgecolor="#555555", linewidth=0.5,
                   hatch="//" if role == "other (derived)" else None, width=0.7)
            bottom += value / scale
            used.add(role)
        if math.isfinite(peak_bytes):
            ax.plot([x - 0.4, x + 0.4], [peak_bytes / scale] * 2, color="black", linewidth=2,
                    linestyle=PEAK_STYLES[peak[0]])
    color_tick_labels(ax, [s.label for s in series], [s.optimizer for s in series], ctx.colors)
    ax.set_ylabel(f"memory [{unit}]")
    ax.set_ylim(0, top / scale * 1.08)
    return used


def _bar_note(ax, x: float, text: str, top: float) -> None:
    # A failed or missing run keeps its slot with its status written in, so it never reads as a gap.
    ax.text(x, top * 0.02, text, rotation=90, ha="center", va="bottom", fontsize=8, color="#b22222",
            fontweight="bold")


# ---------------------------------------------------------------------------------------------------------
# Time: step split


def time_split(rows: pd.DataFrame) -> dict[str, float]:
    """(segment -> mean ms over ok seeds). Whitening runs inside optimizer.step(), so it is subtracted."""
    fb, opt, white = (mean_ok(rows, c) for c in ("forward_backward_ms", "optimizer_step_ms", "whitening_ms"))
    if not (math.isfinite(fb) or math.isfinite(opt)):
        step = mean_ok(rows, "step_ms")
        return {"step (not split)": step} if math.isfinite(step) else {}
    split = {"forward + backward": fb}
    if math.isfinite(opt):
        split["optimizer step (excl. whitening)"] = max(opt - (white if math.isfinite(white) else 0.0), 0.0)
    split["whitening / normalisation"] = white
    return {k: v for k, v in split.items() if math.isfinite(v)}


def plot_time(ctx: Context) -> Figure:
    """Stacked bars of the median step time split per optimizer, one panel per (model, device)."""
    runs = runs_or_skip(ctx, ["step_ms", "forward_backward_ms", "optimizer_step_ms"])
    fig, axes, models, devices = facet_grid(runs)
    series = series_of(runs, ctx.baseline)
    used: set[str] = set()
    for r, device in enumerate(devices):
        for c, model in enumerate(models):
            used |= _time_panel(axes[r, c], facet_rows(runs, model, device), series, ctx)
            axes[r, c].set_title(f"{model} · {device}", fontsize=10)
    handles = [Patch(facecolor=TIME_COLORS[k], edgecolor="#555555", label=k) for k in TIME_COLORS if k in used]
    handles.append(Line2D([], [], color="black", marker="_", markersize=14, linestyle="none",
                          label="measured step_ms (± std over seeds)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8)
    fig.suptitle("Step time split (medians per run, mean over ok seeds)", fontsize=10)
    return fig


def _time_panel(ax, frame: pd.DataFrame, series: list[Series], ctx: Context) -> set[str]:
    if frame.empty:
        empty_panel(ax, "no runs")
        return set()
    splits = [time_split(series_rows(frame, s)) for s in series]
    steps = [(mean_ok(series_rows(frame, s), "step_ms"), std_ok(series_rows(frame, s), "step_ms")) for s in series]
    top = max([sum(s.values()) for s in splits] + [m + (e if math.isfinite(e) else 0) for m, e in steps
                                                   if math.isfinite(m)] + [1e-3])
    used: set[str] = set()
    for x, (s, split, (step, err)) in enumerate(zip(series, splits, steps)):
        rows = series_rows(frame, s)
        if not split:
            _bar_note(ax, x, failure_text(rows) if not (rows["status"] == OK).any() else "n/a", top)
            continue
        bottom = 0.0
        for segment, value in split.items():
            ax.bar(x, value, bottom=bottom, color=TIME_COLORS[segment], edgecolor="#555555", linewidth=0.5,
                   width=0.7)
            bottom += value
            used.add(segment)
        if math.isfinite(step):
            ax.errorbar(x, step, yerr=err if math.isfinite(err) else None, color="black", marker="_",
                        markersize=22, capsize=3, linewidth=1)
    color_tick_labels(ax, [s.label for s in series], [s.optimizer for s in series], ctx.colors)
    ax.set_ylabel("time per step [ms]")
    ax.set_ylim(0, top * 1.1)
    return used


# ---------------------------------------------------------------------------------------------------------
# Kernels: operator cost against matrix size, with the machine's limits


@dataclass
class KernelPanel:
    """One row of panels of the kernels figure: the measured column, its axis label and its machine limit."""

    column: str
    title: str
    ylabel: str
    machine_measure: str | None  # "matmul" or "copy": the limit drawn in this panel
    machine_column: str | None
    machine_unit: str


KERNEL_PANELS = (
    KernelPanel("ms_median", "time", "time per call (median) [ms]", None, None, ""),
    KernelPanel("tflops", "compute rate vs matmul", "achieved rate [TFLOP/s]", "matmul", "tflops", "TFLOP/s"),
    KernelPanel("gbps", "bandwidth vs copy", "achieved bandwidth [GB/s, 10⁹ B/s]", "copy", "gbps", "GB/s"),
)


def kernel_label(row: pd.Series) -> str:
    """`grad_whiten [ns-b0.5-k6]`, with ` ×8` for a batch of matrices."""
    label = str(row["operator"])
    method = row.get("method")
    if isinstance(method, str) and method and method != label:
        label += f" [{method}]"
    batch = pd.to_numeric(row.get("batch"), errors="coerce")
    if pd.notna(batch) and batch > 1:
        label += f" ×{int(batch)}"
    return label


def is_compiled(value: object) -> bool:
    """The `compile` column: "compiled"/"eager" (swanbench.kernels) or a boolean."""
    if isinstance(value, str):
        return value.strip().lower() in ("compiled", "true", "1", "yes")
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def operator_styles(work: pd.DataFrame) -> dict[str, tuple[tuple, str]]:
    """(colour, marker) per series label: one hue per operator (its optimizer's family: whitening red
    like SWAN, Sinkhorn green like SinkGD), one shade and marker per method within it."""
    from matplotlib import colormaps

    pairs = work[["operator", "_label"]].drop_duplicates().sort_values(["operator", "_label"])
    operators = sorted(pairs["operator"].astype(str).unique())
    unknown = iter(c for c in FALLBACK_CMAPS if c not in OPERATOR_CMAPS.values())
    cmaps = {op: OPERATOR_CMAPS.get(op) or next(unknown, "Blues") for op in operators}
    styles = {}
    for op, group in pairs.groupby("operator", sort=True):
        labels = list(group["_label"])
        for i, label in enumerate(labels):
            shade = 0.9 - 0.5 * i / max(len(labels) - 1, 1)  # dark to light, never white
            styles[label] = (colormaps[cmaps[str(op)]](shade), METHOD_MARKERS[i % len(METHOD_MARKERS)])
    return styles


def machine_limits(results: Results) -> pd.DataFrame:
    """The machine's measured limits as rows (measure, dtype, device, tflops, gbps).

    First choice: the per-row `matmul_tflops_peak`/`copy_gbps_peak` columns, the very limits each row's
    `frac_of_*` was computed against. Else `machine.csv` (swanbench.kernels writes it beside kernels.csv;
    `matmul_at_shape` rows count as matmul), else `matmul`/`copy` rows of kernels.csv itself.
    """
    kernels, machine = results.kernels, results.machine
    if any(numeric(kernels, c).notna().any() for c in ("matmul_tflops_peak", "copy_gbps_peak")):
        frame = _limits_from_rows(kernels)
    elif machine is not None and "measure" in machine.columns:
        frame = machine.assign(measure=machine["measure"].replace({"matmul_at_shape": "matmul"}))
    else:
        frame = kernels[kernels["operator"].astype(str).isin(MACHINE_OPERATORS)].rename(
            columns={"operator": "measure"})
    for column in ("device", "dtype"):
        frame[column] = frame[column].astype(str) if column in frame.columns else None
    return frame


def _limits_from_rows(kernels: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in kernels.iterrows():
        dtype = r.get("compute_dtype", r.get("dtype"))
        rows.append({"measure": "matmul", "dtype": dtype, "device": r.get("device"),
                     "tflops": pd.to_numeric(r.get("matmul_tflops_peak"), errors="coerce")})
        rows.append({"measure": "copy", "dtype": "float32", "device": r.get("device"),
                     "gbps": pd.to_numeric(r.get("copy_gbps_peak"), errors="coerce")})
    return pd.DataFrame(rows, columns=["measure", "dtype", "device", "tflops", "gbps"])


def kernel_rows(kernels: pd.DataFrame) -> pd.DataFrame:
    """The operator rows that ran (status ok, or no status column) with a size and a time."""
    frame = kernels.copy()
    for column in ("device", "dtype"):
        frame[column] = frame[column].astype(str) if column in frame.columns else "?"
    frame["_size"] = numeric(frame, "rows") * numeric(frame, "cols")
    keep = ~frame["operator"].astype(str).isin(MACHINE_OPERATORS)
    keep &= frame["_size"].notna() & numeric(frame, "ms_median").notna()
    if "status" in frame.columns:
        keep &= frame["status"].fillna("ok").astype(str) == OK
    frame = frame[keep].copy()
    frame["_label"] = frame.apply(kernel_label, axis=1) if len(frame) else pd.Series(dtype=str)
    frame["_compiled"] = frame["compile"].map(is_compiled) if "compile" in frame.columns else False
    return frame


def plot_kernels(ctx: Context) -> Figure:
    """Operator time and achieved rates against matrix size (log-log): one column per (device, dtype),
    one row per measure, the machine's measured matmul rate and copy bandwidth drawn as limits."""
    kernels = ctx.results.kernels
    if kernels is None or kernels.empty:
        raise SkipFigure("no kernels.csv")
    missing = [c for c in ("operator", "rows", "cols", "ms_median") if c not in kernels.columns]
    if missing:
        raise SkipFigure(f"kernels.csv lacks {', '.join(missing)}")
    work = kernel_rows(kernels)
    if work.empty:
        raise SkipFigure("kernels.csv has no ok operator rows with a size and a time")
    machine = machine_limits(ctx.results)
    panels = [p for p in KERNEL_PANELS if numeric(work, p.column).notna().any()]
    columns = list(work[["device", "dtype"]].drop_duplicates().sort_values(["device", "dtype"]).itertuples(
        index=False, name=None))
    fig = Figure(figsize=(4.4 * len(columns) + 3.0, 3.3 * len(panels) + 0.8), layout="constrained")
    axes = fig.subplots(len(panels), len(columns), squeeze=False, sharex="col")
    styles = operator_styles(work)
    for c, (device, dtype) in enumerate(columns):
        rows = work[(work["device"] == device) & (work["dtype"] == dtype)]
        limits = machine[(machine["device"] == device) | machine["device"].isin(["None", "nan"])]
        for r, panel in enumerate(panels):
            _kernel_panel(axes[r, c], rows, limits, panel, styles)
            axes[r, c].set_title(f"{device} · {dtype} input · {panel.title}", fontsize=9)
        axes[-1, c].set_xlabel("matrix size m·n [elements] (m × n gradient)")
    fig.legend(handles=_kernel_legend(styles, work), loc="outside right upper", fontsize=7)
    fig.suptitle("Operator cost against matrix size, log-log (thick grey lines: the machine's measured limits)",
                 fontsize=10)
    return fig


def _kernel_legend(styles: dict[str, tuple[tuple, str]], work: pd.DataFrame) -> list:
    handles = [Line2D([], [], color=color, marker=marker, markersize=4, label=label)
               for label, (color, marker) in styles.items()]
    if work["_compiled"].any():
        handles += [Line2D([], [], color="#333333", marker="o", label="eager"),
                    Line2D([], [], color="#333333", marker="o", markerfacecolor="none", linestyle="--",
                           label="torch.compile")]
    handles.append(Line2D([], [], color="black", linewidth=3, alpha=0.45, label="machine limit (measured)"))
    return handles


def _kernel_panel(ax, rows: pd.DataFrame, limits: pd.DataFrame, panel: KernelPanel,
                  styles: dict[str, tuple[tuple, str]]) -> None:
    for (label, compiled), group in rows.groupby(["_label", "_compiled"], sort=True):
        group = group.assign(_y=numeric(group, panel.column)).dropna(subset=["_y"])
        group = group[group["_y"] > 0]
        if group.empty:
            continue
        color, marker = styles[label]
        # Every measured shape is a point; the line joins the median per size (m x n and n x m cost the same).
        ax.plot(group["_size"], group["_y"], linestyle="none", marker=marker, markersize=4, color=color,
                markerfacecolor="none" if compiled else color)
        line = group.groupby("_size")["_y"].median()
        ax.plot(line.index, line.values, linestyle="--" if compiled else "-", linewidth=1.2, color=color)
    if panel.machine_measure:
        dtypes = _compute_dtypes(rows) if panel.machine_measure == "matmul" else None
        _machine_lines(ax, limits, panel, dtypes)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Ticks at the measured sizes read better than 3x10^3, 4x10^3, ... when there are few of them.
    sizes = sorted(rows["_size"].dropna().unique())
    if 0 < len(sizes) <= 6:
        ax.xaxis.set_major_locator(ticker.FixedLocator(sizes))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.grid(True, which="major", alpha=0.3)


def _compute_dtypes(rows: pd.DataFrame) -> list[str]:
    """The dtypes the arithmetic of these rows ran in: whitening computes in fp32 even for bf16 input."""
    column = "compute_dtype" if "compute_dtype" in rows.columns else "dtype"
    return sorted(str(d) for d in rows[column].dropna().unique())


def _machine_lines(ax, limits: pd.DataFrame, panel: KernelPanel, dtypes: list[str] | None) -> None:
    """The best measured matmul rate (per compute dtype) or copy bandwidth, as a horizontal line."""
    rows = limits[limits["measure"].astype(str) == panel.machine_measure]
    if dtypes is not None:
        rows = rows[rows["dtype"].isin(dtypes)]
    for dtype, group in rows.groupby("dtype", sort=True):
        best = numeric(group, panel.machine_column).max()
        if not (math.isfinite(best) and best > 0):
            continue
        ax.axhline(best, color="black", alpha=0.45, linewidth=3)
        ax.annotate(f"{panel.machine_measure} {dtype}: {best:.3g} {panel.machine_unit}", xy=(0.02, best),
                    xycoords=("axes fraction", "data"), va="bottom", fontsize=7)


# ---------------------------------------------------------------------------------------------------------
# Perplexity curves


def curve_frame(ctx: Context) -> pd.DataFrame:
    """curves.csv with a perplexity column (`eval_ppl`, else exp(eval_loss)) and each run's final status."""
    curves = ctx.results.curves
    if curves is None or curves.empty:
        raise SkipFigure("no curves.csv" if curves is None else "curves.csv has no rows")
    frame = curves.copy()
    ppl = numeric(frame, "eval_ppl")
    frame["_ppl"] = ppl.where(ppl.notna(), np.exp(numeric(frame, "eval_loss")))
    frame["_tokens"] = numeric(frame, "tokens")
    frame["_seconds"] = numeric(frame, "train_seconds")
    finite = np.isfinite(frame["_ppl"]) & np.isfinite(frame["_tokens"])
    if not finite.any():
        raise SkipFigure("curves.csv has no finite eval perplexity with a token count")
    return frame


def mean_curve(rows: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per eval step over seeds: mean x (tokens or seconds), mean tokens, and mean/min/max perplexity."""
    rows = rows[np.isfinite(rows["_ppl"]) & np.isfinite(rows[x])]
    grouped = rows.groupby("step" if "step" in rows.columns else x)
    return pd.DataFrame({"x": grouped[x].mean(), "tokens": grouped["_tokens"].mean(),
                         "mean": grouped["_ppl"].mean(), "lo": grouped["_ppl"].min(),
                         "hi": grouped["_ppl"].max()}).sort_values("x")


def plot_perplexity(ctx: Context) -> Figure:
    """Eval perplexity against tokens (and training seconds), one row per (model, device)."""
    curves = curve_frame(ctx)
    xs = [("_tokens", "training tokens [tokens]")]
    if np.isfinite(curves["_seconds"]).any():
        xs.append(("_seconds", "training time [s] (eval excluded)"))
    facets = group_keys(curves, ALWAYS_AXES)
    series = series_of(curves, ctx.baseline)
    fig = Figure(figsize=(5.2 * len(xs) + 2.2, 3.4 * len(facets) + 0.6), layout="constrained")
    axes = fig.subplots(len(facets), len(xs), squeeze=False)
    for r, (model, device) in enumerate(facets):
        frame = select(curves, ALWAYS_AXES, (model, device))
        for c, (x, xlabel) in enumerate(xs):
            _perplexity_panel(axes[r, c], frame, series, x, ctx, model, device)
            axes[r, c].set_xlabel(xlabel)
            axes[r, c].set_title(f"{model} · {device}", fontsize=10)
        axes[r, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    fig.suptitle("Eval perplexity: mean over ok seeds, band = min–max over seeds\n"
                 f"★ = tokens to target; dashed grey = {ctx.baseline} final; dotted with × = a failed run",
                 fontsize=9)
    return fig


def _perplexity_panel(ax, frame: pd.DataFrame, series: list[Series], x: str, ctx: Context, model: str,
                      device: str) -> None:
    for s in series:
        rows, label = series_rows(frame, s), s.label
        color = ctx.colors.get(s.optimizer, "black")
        ok = rows[rows["status"] == OK]
        if not ok.empty:
            curve = mean_curve(ok, x)
            n = ok["run_id"].nunique()
            ax.plot(curve["x"], curve["mean"], color=color, linewidth=1.6, linestyle=s.linestyle,
                    label=f"{label} (n={n})")
            if n > 1:
                ax.fill_between(curve["x"], curve["lo"], curve["hi"], color=color, alpha=0.2, linewidth=0)
            _mark_target(ax, curve, _ok_runs_of(ctx, model, device, s), x, color)
        _draw_failed(ax, rows[rows["status"] != OK], x, label, color)
    target = _baseline_final(ctx, frame, model, device)
    if math.isfinite(target):
        ax.axhline(target, color="#555555", linestyle="--", linewidth=1,
                   label=f"{ctx.baseline} final: {target:.4g}")
    log_scale = _perplexity_yscale(ax)
    if x == "_tokens":
        ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
    ax.set_ylabel("eval perplexity (log scale)" if log_scale else "eval perplexity")
    ax.grid(True, which="both", alpha=0.25)


def _perplexity_yscale(ax) -> bool:
    """Log scale (ticks at 1, 2, 5 x 10^k) when the curves span more than 3x, else linear; True if log."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] or [[]])
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) == 0 or values.max() / values.min() <= 3:
        return False
    ax.set_yscale("log")
    # Over less than 1.5 decades ticks at 1, 2, 5 x 10^k leave one or two labels: use a finer set.
    fine = math.log10(values.max() / values.min()) < 1.5
    subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if fine else (1.0, 2.0, 5.0)
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    return True


def _ok_runs_of(ctx: Context, model: str, device: str, series: Series) -> pd.DataFrame:
    """The ok runs (runs.csv rows) behind one curve, for its tokens-to-target."""
    runs = ctx.results.runs
    if runs is None or any(a not in runs.columns for a in series.axes):
        return pd.DataFrame()
    rows = series_rows(facet_rows(runs, model, device), series)
    return rows[rows["status"] == OK]


def _mark_target(ax, curve: pd.DataFrame, runs: pd.DataFrame, x: str, color: str) -> None:
    """A star on the mean curve at the mean tokens-to-target of the seeds that reached it."""
    tokens = numeric(runs, "tokens_to_target").dropna() if not runs.empty else pd.Series(dtype=float)
    curve = curve.dropna(subset=["tokens"]).sort_values("tokens")
    if tokens.empty or curve.empty:
        return
    at = float(tokens.mean())
    if not curve["tokens"].min() <= at <= curve["tokens"].max():
        log.debug("tokens_to_target %s lies outside the curve's tokens; not marked", at)
        return
    # The seconds panel: the measured seconds_to_target when the table has it, else the time at which the
    # mean curve had seen that many tokens.
    seconds = numeric(runs, "seconds_to_target").dropna()
    if x == "_tokens":
        x_at = at
    else:
        x_at = float(seconds.mean()) if len(seconds) else float(np.interp(at, curve["tokens"], curve["x"]))
    y = float(np.exp(np.interp(at, curve["tokens"], np.log(curve["mean"]))))
    ax.plot([x_at], [y], marker="*", markersize=13, color=color, markeredgecolor="black", linestyle="none")


def _draw_failed(ax, rows: pd.DataFrame, x: str, label: str, color: str) -> None:
    """Each failed run's own curve, dotted, ending in an x, labelled with its status."""
    labelled: set[str] = set()
    for run_id, run in rows.groupby("run_id", sort=True):
        run = run[np.isfinite(run["_ppl"]) & np.isfinite(run[x])].sort_values(x)
        status = str(run["status"].iloc[0]) if len(run) else str(rows.loc[rows["run_id"] == run_id, "status"].iloc[0])
        name = f"{label}: {status}"
        if run.empty:
            continue
        ax.plot(run[x], run["_ppl"], color=color, linestyle=":", linewidth=1, alpha=0.8,
                label=None if name in labelled else name)
        ax.plot(run[x].iloc[-1:], run["_ppl"].iloc[-1:], marker="x", color=color, markersize=8, linestyle="none")
        labelled.add(name)


def _baseline_final(ctx: Context, frame: pd.DataFrame, model: str, device: str) -> float:
    """The baseline's mean final eval perplexity in this facet: runs.csv, else the last curve point."""
    runs = ctx.results.runs
    if runs is not None:
        rows = facet_rows(runs, model, device)
        value = mean_ok(rows[rows["optimizer"].map(canonical_name) == ctx.baseline], "final_eval_ppl")
        if math.isfinite(value):
            return value
    rows = frame[(frame["optimizer"].map(canonical_name) == ctx.baseline) & (frame["status"] == OK)]
    rows = rows[np.isfinite(rows["_ppl"])]
    if rows.empty:
        return math.nan
    last = rows.sort_values("_tokens").groupby("run_id").tail(1)
    return float(last["_ppl"].mean())


# ---------------------------------------------------------------------------------------------------------
# Pareto: peak memory against final perplexity


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower x and lower y), sorted by x."""
    front: list[tuple[float, float]] = []
    for px, py in sorted(points):
        if not front or py < front[-1][1]:
            front.append((px, py))
    return front


def plot_pareto(ctx: Context) -> Figure:
    """Peak memory against final eval perplexity per optimizer, one panel per (model, device)."""
    runs = runs_or_skip(ctx, ["final_eval_ppl"])
    if peak_column(runs[runs["status"] == OK]) is None:
        raise SkipFigure("no ok run has a peak memory column (peak_allocated_bytes, nvml_peak_bytes, peak_rss_bytes)")
    fig, axes, models, devices = facet_grid(runs, panel=(4.2, 3.4))
    series = series_of(runs, ctx.baseline)
    for r, device in enumerate(devices):
        for c, model in enumerate(models):
            _pareto_panel(axes[r, c], facet_rows(runs, model, device), series, ctx)
            axes[r, c].set_title(f"{model} · {device}", fontsize=10)
    fig.suptitle("Peak memory against final eval perplexity, mean ± std over ok seeds\n"
                 f"grey staircase: Pareto front (lower-left is better); {BYTES_NOTE}", fontsize=9)
    return fig


def _pareto_panel(ax, frame: pd.DataFrame, series: list[Series], ctx: Context) -> None:
    peak = peak_column(frame[frame["status"] == OK])
    if peak is None:
        empty_panel(ax, "no peak memory measured")
        return
    points, absent = [], []
    for s in series:
        rows, label, opt = series_rows(frame, s), s.label, s.optimizer
        mem, ppl = mean_ok(rows, peak[0]), mean_ok(rows, "final_eval_ppl")
        if math.isfinite(mem) and math.isfinite(ppl):
            points.append((s, mem, ppl, std_ok(rows, peak[0]), std_ok(rows, "final_eval_ppl")))
        else:
            absent.append(f"{label}: {failure_text(rows) if not (rows['status'] == OK).any() else 'n/a'}")
    if not points:
        empty_panel(ax, "\n".join(["no ok run with both values", *absent]))
        return
    scale, unit = bytes_unit(max(p[1] for p in points))
    xy = [(mem / scale, ppl) for _, mem, ppl, _, _ in points]
    front = pareto_front(xy)
    ax.plot(*zip(*front), color="#999999", linewidth=4, alpha=0.4, drawstyle="steps-post", zorder=1)
    for (s, mem, ppl, mem_err, ppl_err), dy in zip(points, label_offsets(xy)):
        color = ctx.colors.get(s.optimizer, "black")
        ax.errorbar(mem / scale, ppl, xerr=_finite(mem_err, scale), yerr=_finite(ppl_err, 1.0),
                    marker=s.marker, markersize=7, color=color,
                    capsize=3, zorder=3, linestyle="none")
        ax.annotate(s.label, (mem / scale, ppl), textcoords="offset points", xytext=(6, dy), fontsize=7,
                    color=color)
    if absent:
        ax.text(0.98, 0.98, "not shown:\n" + "\n".join(absent), transform=ax.transAxes, ha="right", va="top",
                fontsize=7, color="#b22222")
    ax.set_xlabel(f"{peak[1]} [{unit}]", fontsize=8)
    ax.set_ylabel("final eval perplexity")
    ax.margins(0.15)
    ax.grid(True, alpha=0.25)


def label_offsets(points: Sequence[tuple[float, float]], step: float = 9.0) -> list[float]:
    """Vertical label offsets (points) so that labels of coinciding or close points stack, not overprint."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    offsets = []
    for i, (x, y) in enumerate(points):
        near = sum(abs(x - px) < 0.1 * span_x and abs(y - py) < 0.05 * span_y for px, py in points[:i])
        offsets.append(4.0 - step * near)
    return offsets


def _finite(err: float, scale: float) -> float | None:
    return err / scale if math.isfinite(err) else None


# ---------------------------------------------------------------------------------------------------------
# Drawing and saving


FIGURES: dict[str, Callable[[Context], Figure]] = {
    "memory": plot_memory,
    "time": plot_time,
    "kernels": plot_kernels,
    "perplexity": plot_perplexity,
    "pareto": plot_pareto,
}


def save_figure(fig: Figure, out_dir: Path, name: str, formats: Sequence[str]) -> list[Path]:
    """Write `fig` once per format, each atomically (temp file + rename), and return the paths."""
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        tmp = out_dir / f".{name}.{fmt}.tmp"
        # No timestamp in SVG/PDF metadata, so re-drawing unchanged tables gives byte-identical papers' figures.
        metadata = {"Date": None} if fmt in ("svg", "pdf") else None
        fig.savefig(tmp, format=fmt, dpi=PNG_DPI if fmt == "png" else None, metadata=metadata)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    formats = tuple(f.lower().lstrip(".") for f in formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown figure format(s) {unknown or '(none)'}; use {', '.join(FORMATS)}")
    return formats


def draw_figures(results_dir: Path, out_dir: Path | None = None, formats: Sequence[str] = ("png", "svg"),
                 baseline: str | None = None, only: Sequence[str] | None = None) -> FigureSet:
    """Draw every figure the tables support; the others are skipped with their reason."""
    formats = check_formats(formats)
    unknown = sorted(set(only or ()) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    results = load_results(Path(results_dir))
    out_dir = Path(out_dir) if out_dir is not None else Path(results_dir) / FIGURES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for frame in (results.runs, results.curves) if frame is not None for n in frame["optimizer"]]
    baseline = baseline_of(results.runs, baseline)
    results = with_targets(results, resolve_baseline(results.runs, baseline) or baseline)
    ctx = Context(results, optimizer_colors(sorted(set(names))), canonical_name(baseline))
    done = FigureSet()
    for name, draw in FIGURES.items():
        if only is not None and name not in only:
            continue
        try:
            fig = draw(ctx)
        except SkipFigure as reason:
            done.skipped[name] = str(reason)
            log.info("figure %s skipped: %s", name, reason)
            # A figure drawn from an earlier state of the tables would now be stale: remove it.
            for fmt in FORMATS:
                (out_dir / f"{name}.{fmt}").unlink(missing_ok=True)
            continue
        done.paths += save_figure(fig, out_dir, name, formats)
    return done


def plot_results(results_dir: Path, out_dir: Path | None = None, formats: Sequence[str] = ("png", "svg")
                 ) -> list[Path]:
    """Draw every figure the tables of `results_dir` support into `out_dir` (default RESULTS/figures)."""
    return draw_figures(results_dir, out_dir, formats).paths
