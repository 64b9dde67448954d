"""Pareto: peak memory against final perplexity, per model, with the non-dominated front."""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from swanbench.analysis.figures.common import (BYTES_NOTE, Context, Series, SkipFigure, empty_panel, facet_grid,
                                               facet_rows, failure_text, mean_ok, runs_or_skip, series_of, series_rows,
                                               std_ok)
from swanbench.analysis.results import OK, bytes_unit, canonical_name, peak_column


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
    fig.suptitle(f"Peak memory against final eval perplexity, mean ± std over ok seeds; both axes from 0\n"
                 f"grey staircase: Pareto front (lower-left is better); labels: change vs {ctx.baseline}\n"
                 f"{BYTES_NOTE}", fontsize=9)
    return fig


def _pareto_panel(ax, frame: pd.DataFrame, series: list[Series], ctx: Context) -> None:
    peak = peak_column(frame[frame["status"] == OK])
    if peak is None:
        empty_panel(ax, "no peak memory measured")
        return
    points, absent = [], []
    for s in series:
        rows, label = series_rows(frame, s), s.label
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
    base = next(((mem, ppl) for s, mem, ppl, _, _ in points if canonical_name(s.optimizer) == ctx.baseline
                 and not s.axes), None)
    x_max = max(x for x, _ in xy) * 1.35
    y_max = max(p[2] + (p[4] if math.isfinite(p[4]) else 0) for p in points) * 1.15
    box = ax.get_position()
    height_pt = box.height * ax.figure.get_figheight() * 72
    for (s, mem, ppl, mem_err, ppl_err), dy in zip(points, label_offsets(xy, (x_max, y_max), height_pt)):
        color = ctx.colors.get(s.optimizer, "black")
        ax.errorbar(mem / scale, ppl, xerr=_finite(mem_err, scale), yerr=_finite(ppl_err, 1.0),
                    marker=s.marker, markersize=7, color=color,
                    capsize=3, zorder=3, linestyle="none")
        ax.annotate(s.label + _versus(mem, ppl, base, s, ctx), (mem / scale, ppl), textcoords="offset points",
                    xytext=(6, dy), fontsize=7, color=color)
    if absent:
        ax.text(0.98, 0.98, "not shown:\n" + "\n".join(absent), transform=ax.transAxes, ha="right", va="top",
                fontsize=7, color="#b22222")
    ax.set_xlabel(f"{peak[1]} [{unit}]", fontsize=8)
    ax.set_ylabel("final eval perplexity")
    # Both axes from zero: a 1% memory difference must look like 1%, not fill the panel.
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, y_max)
    ax.grid(True, alpha=0.25)


def _versus(mem: float, ppl: float, base: tuple[float, float] | None, s: Series, ctx: Context) -> str:
    """`: -1.1% memory, -61% ppl` against the baseline's point ("" for the baseline or without one)."""
    if base is None or canonical_name(s.optimizer) == ctx.baseline or not (base[0] > 0 and base[1] > 0):
        return ""
    return f": {(mem - base[0]) / base[0]:+.1%} memory, {(ppl - base[1]) / base[1]:+.0%} ppl"


def label_offsets(points: Sequence[tuple[float, float]], limits: tuple[float, float], height_pt: float,
                  line_pt: float = 9.0, label_width: float = 0.45) -> list[float]:
    """Vertical label offsets (points) so that no two labels overprint: positions are compared on the panel
    (axes `limits` x, y from 0, the panel `height_pt` high), labels whose x lie within `label_width` of the
    panel's width of each other count as side by side, and a label is moved down below any such label above it.

    A label starts 4 pt above its point; the highest point keeps its place."""
    x_max, y_max = limits
    fx = [x / x_max if x_max > 0 else 0.0 for x, _ in points]
    y_pt = [y / y_max * height_pt if y_max > 0 else 0.0 for _, y in points]
    placed: list[tuple[float, float]] = []  # (x as a fraction of the panel, label y in points)
    offsets = [0.0] * len(points)
    for i in sorted(range(len(points)), key=lambda i: -y_pt[i]):
        label = y_pt[i] + 4.0
        moved = True
        while moved:  # lowering a label can bring it next to another placed label: repeat until free
            moved = False
            for px, py in placed:
                if abs(fx[i] - px) < label_width and abs(label - py) < line_pt:
                    label, moved = py - line_pt, True
        placed.append((fx[i], label))
        offsets[i] = label - y_pt[i]
    return offsets


def _finite(err: float, scale: float) -> float | None:
    return err / scale if math.isfinite(err) else None
