"""Kernels: operator time against matrix size (log-log), one small panel per operator, the best method against
the machine's measured limits highlighted with its headline ratio."""

from __future__ import annotations

import math
import textwrap

import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from swanbench.analysis.figures.common import (FALLBACK_CMAPS, METHOD_MARKERS, MIN_WIDTH, OPERATOR_CMAPS, Context,
                                               SkipFigure)
from swanbench.analysis.kernel_summary import best_method, kernel_rows, machine_limits, short_count
from swanbench.analysis.results import numeric


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


def plot_kernels(ctx: Context) -> Figure:
    """One small log-log panel per operator (columns) and input dtype (rows): time per call against matrix
    size, every method thin and grey, the best one against the machine's own limit highlighted, with its
    headline ratio written in the panel (`headline`)."""
    kernels = ctx.results.kernels
    if kernels is None or kernels.empty:
        raise SkipFigure("no kernels.csv")
    missing = [c for c in ("operator", "rows", "cols", "ms_median") if c not in kernels.columns]
    if missing:
        raise SkipFigure(f"kernels.csv lacks {', '.join(missing)}")
    work = kernel_rows(kernels)
    if "batch" in work.columns:  # one matrix per call: batched variants are per-matrix costs (models.csv)
        work = work[pd.to_numeric(work["batch"], errors="coerce").fillna(1) <= 1]
    if work.empty:
        raise SkipFigure("kernels.csv has no ok operator rows with a size and a time")
    machine = machine_limits(ctx.results)
    skipped = skip_reasons(kernels)
    operators = sorted(set(work["operator"].astype(str)) | {op for op, _ in skipped})
    dtypes = sorted(set(work["dtype"]) | {dt for _, dt in skipped}, key=lambda d: (d != "float32", d))
    fig = Figure(figsize=(max(3.3 * len(operators) + 0.6, MIN_WIDTH), 2.9 * len(dtypes) + 1.5), layout="constrained")
    axes = fig.subplots(len(dtypes), len(operators), squeeze=False, sharex=True)
    styles = operator_styles(work)
    for r, dtype in enumerate(dtypes):
        for c, operator in enumerate(operators):
            rows = work[(work["dtype"] == dtype) & (work["operator"].astype(str) == operator)]
            limits = machine[machine["device"].isin(list(rows["device"].unique()) + ["None", "nan"])]
            _operator_panel(axes[r, c], rows, limits, styles, skipped.get((operator, dtype)))
            axes[r, c].set_title(f"{operator} · {dtype} input", fontsize=9)
        axes[r, 0].set_ylabel("time per call (median) [ms]", fontsize=8)
    for c in range(len(operators)):
        axes[-1, c].set_xlabel("matrix size m·n [elements]", fontsize=8)
    width = int(11 * fig.get_figwidth())  # characters that fit the figure at this font size
    title = ("Operator time against matrix size (log-log), one matrix per call; bold: the method closest to the "
             "machine's limit, with its ratio")
    fig.suptitle("\n".join(textwrap.fill(t, width) for t in (title, limits_text(machine))), fontsize=9)
    return fig


def limits_text(machine: pd.DataFrame) -> str:
    """`machine limits measured in the same run: matmul float32 0.383 TFLOP/s, ...; copy 26.1 GB/s`."""
    parts = []
    for measure, column, unit in (("matmul", "tflops", "TFLOP/s"), ("copy", "gbps", "GB/s")):
        rows = machine[machine["measure"].astype(str) == measure]
        for dtype, group in rows.groupby("dtype", sort=True):
            best = numeric(group, column).max()
            if math.isfinite(best) and best > 0:
                parts.append(f"{measure} {dtype} {best:.3g} {unit}")
    return "machine limits measured in the same run: " + ", ".join(parts) if parts else "no machine limits measured"


def skip_reasons(kernels: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(operator, dtype) -> the suite's reason for skipping its rows (kernels.csv `skip_reason`)."""
    if "skip_reason" not in kernels.columns:
        return {}
    rows = kernels.dropna(subset=["skip_reason"])
    return {(str(op), str(dt)): str(g["skip_reason"].iloc[0]) for (op, dt), g in rows.groupby(["operator", "dtype"])}


def _operator_panel(ax, rows: pd.DataFrame, limits: pd.DataFrame, styles: dict[str, tuple[tuple, str]],
                    skipped: str | None = None) -> None:
    if rows.empty:
        text = "not measured" + (f":\n{textwrap.fill(skipped, 34)}" if skipped else "")
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#666666", fontsize=7)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
        ax.set_yscale("log")
        ax.set_xscale("log")
        return
    best, headline = best_method(rows, limits)
    for (label, compiled), group in rows.groupby(["_label", "_compiled"], sort=True):
        line = group.groupby("_size")["ms_median"].median()
        line = line[line > 0]
        if line.empty:
            continue
        if label == best and not compiled:
            continue  # drawn last, on top
        ax.plot(line.index, line.values, color="#bbbbbb", linewidth=0.9, linestyle="--" if compiled else "-",
                marker="o", markersize=2, zorder=1)
    if best is not None:
        group = rows[(rows["_label"] == best) & ~rows["_compiled"].astype(bool)]
        line = group.groupby("_size")["ms_median"].median()
        color, marker = _strong(rows), styles.get(best, ("black", "o"))[1]
        method = best.split("[", 1)[1].rstrip("]") if "[" in best else best
        ax.plot(line.index, line.values, color=color, linewidth=2.2, marker=marker, markersize=4, zorder=3,
                label=method)
        others = rows["_label"].nunique() - 1
        ax.text(0.03, 0.97, f"best: {method}" + (f"\n{headline}" if headline else "")
                + (f"\ngrey: {others} other method{'s' if others != 1 else ''}" if others else ""),
                transform=ax.transAxes, ha="left", va="top", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="#cccccc", alpha=0.9))
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Few sizes (a quick suite): ticks at the measured sizes read better than 3x10^3, 4x10^3, ...
    sizes = sorted(rows["_size"].dropna().unique())
    if 0 < len(sizes) <= 6:
        ax.xaxis.set_major_locator(ticker.FixedLocator(sizes))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: short_count(v)))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=7)


def _strong(rows: pd.DataFrame):
    """The operator family's dark shade (whitening red like SWAN, Sinkhorn green like SinkGD, ...)."""
    from matplotlib import colormaps

    operator = str(rows["operator"].iloc[0])
    return colormaps[OPERATOR_CMAPS.get(operator, "Greys")](0.85)
