"""Memory: where the memory goes, stacked by role, per optimizer, faceted by model and device."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from swanbench.analysis.figures.common import (BYTES_NOTE, PEAK_STYLES, ROLE_COLORS, Context, Series, color_tick_labels,
                                               empty_panel, facet_grid, facet_rows, failure_text, mean_ok, runs_or_skip,
                                               series_of, series_rows)
from swanbench.analysis.results import OK, bytes_unit, peak_column


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
