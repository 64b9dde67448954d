"""The shared parts of every figure: colours, series, facets, the drawing context, the skip rule."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from swanbench.analysis.results import (OK, OPTIONAL_AXES, Results, axis_label, canonical_name, group_keys, model_order,
                                        numeric, optimizer_order, outcome_text, select)

log = logging.getLogger(__name__)

# One colour per optimizer in every figure: its registry entry's (`OptimizerInfo.color`). Unknown optimizers get these in sorted-name order, so the mapping is the same in every figure of a set.
FALLBACK_COLORS = ("#ff7f0e", "#17becf", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
                   "#ffbb78", "#393b79")

# Colour of each memory role, in stacking order (bottom to top), and of each step-time segment. None of
# them is an optimizer's colour (blue AdamW, red SWAN, green SinkGD, ...): a bar's colour says its role,
# a tick label's colour says its optimizer. Tensors that persist are grey, optimizer state orange.
ROLE_COLORS = {
    "parameters": "#525252", "gradients": "#a3a3a3", "optimizer state": "#e6550d",
    "state on hidden matrices": "#e6550d", "state on embeddings, head, norms": "#fdae6b",
    "activations (profiler)": "#66c2a5", "logits & loss buffers (derived)": "#b3b3de", "other (derived)": "#e0e0e0",
    "transient in step": "#ffd92f",
}
TIME_COLORS = {"forward + backward": "#525252", "optimizer step (excl. whitening)": "#fdae6b",
               "whitening / normalisation": "#e6550d", "step (not split)": "#bbbbbb"}
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
