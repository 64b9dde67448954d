"""Time: the step time split into forward+backward, optimizer step and whitening."""

from __future__ import annotations

import math
import textwrap

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from swanbench.analysis.figures.common import (TIME_COLORS, Context, Series, color_tick_labels, empty_panel, facet_grid,
                                               facet_rows, failure_text, mean_ok, runs_or_skip, series_of, series_rows,
                                               std_ok)
from swanbench.analysis.figures.memory import _bar_note
from swanbench.analysis import noise
from swanbench.analysis.results import OK, canonical_name


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
    """Stacked bars of the median step time split per optimizer, one panel per (model, device); a bar whose
    step time the runs' own spread cannot tell from the baseline's is greyed, with its IQR / median."""
    runs = runs_or_skip(ctx, ["step_ms", "forward_backward_ms", "optimizer_step_ms"])
    fig, axes, models, devices = facet_grid(runs)
    series = series_of(runs, ctx.baseline)
    used: set[str] = set()
    for r, device in enumerate(devices):
        for c, model in enumerate(models):
            used |= _time_panel(axes[r, c], facet_rows(runs, model, device), series, ctx)
            axes[r, c].set_title(f"{model} · {device}", fontsize=10)
    handles = [Patch(facecolor=TIME_COLORS[k], edgecolor="#555555", label=k) for k in TIME_COLORS
               if k in used - {NOISY}]
    handles.append(Line2D([], [], color="black", marker="_", markersize=14, linestyle="none",
                          label="measured step_ms (± std over seeds)"))
    if NOISY in used:
        handles.append(Patch(facecolor="#dddddd", edgecolor="#999999", alpha=0.5,
                             label=f"greyed: too noisy to judge vs {ctx.baseline}\n(the rule of swanbench check)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2), fontsize=8)
    load = noise.load_note(runs)
    width = int(11 * fig.get_figwidth())  # characters that fit the figure at this font size
    fig.suptitle("Step time split (medians per run, mean over ok seeds)"
                 + (f"\n{textwrap.fill(f'machine while measuring: {load}', width)}" if load else ""), fontsize=9)
    return fig


NOISY = "too noisy"


def _time_panel(ax, frame: pd.DataFrame, series: list[Series], ctx: Context) -> set[str]:
    if frame.empty:
        empty_panel(ax, "no runs")
        return set()
    base_rows = frame[frame["optimizer"].map(canonical_name) == ctx.baseline]
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
        verdict = noise.self_judge("step_ms", rows) if base_rows.empty or canonical_name(s.optimizer) == \
            ctx.baseline else noise.judge("step_ms", rows, base_rows)
        noisy = verdict is not None and verdict.noisy
        bottom = 0.0
        for segment, value in split.items():
            ax.bar(x, value, bottom=bottom, color=TIME_COLORS[segment], edgecolor="#555555", linewidth=0.5,
                   width=0.7, alpha=0.25 if noisy else 1.0)
            bottom += value
            used.add(segment)
        if noisy:
            used.add(NOISY)
            own, other = verdict.spreads
            versus = "" if canonical_name(s.optimizer) == ctx.baseline or base_rows.empty else f"\nvs {other:.2f}"
            tall = bottom > 0.4 * top  # inside a tall bar, else above its error bar
            above = max(bottom, step + (err if math.isfinite(err) else 0.0)) if math.isfinite(step) else bottom
            ax.text(x, bottom / 2 if tall else above + 0.02 * top, f"too noisy\nstep IQR/median\n{own:.2f}{versus}",
                    ha="center", va="center" if tall else "bottom", fontsize=7, color="#444444")
        if math.isfinite(step):
            ax.errorbar(x, step, yerr=err if math.isfinite(err) else None, color="black", marker="_",
                        markersize=22, capsize=3, linewidth=1)
    color_tick_labels(ax, [s.label for s in series], [s.optimizer for s in series], ctx.colors)
    ax.set_ylabel("time per step [ms]")
    ax.set_ylim(0, top * (1.35 if NOISY in used else 1.1))
    return used
