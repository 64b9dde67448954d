"""Compare: the same cells measured on several devices (`swanbench compare`), bars coloured by device.

One panel per measure (step time, throughput, peak memory, final perplexity) and cell; in each, one group
of bars per optimizer (tick labels in the optimizer's colour), one bar per device (the device's colour,
named in the legend with its limits). A device's time bar that the runs' own spread cannot tell from the
baseline's on the same device is drawn faint (the rule of `swanbench check`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from swanbench.analysis import noise
from swanbench.analysis.compare import DEVICE_COLORS, Comparison, cell_columns, device_limits, with_byte_unit
from swanbench.analysis.figures.common import optimizer_colors
from swanbench.analysis.results import canonical_name, numeric, optimizer_order


def draw_compare(frame: pd.DataFrame, comparison: Comparison, baseline: str, out_dir: Path,
                 formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Draw the comparison into `out_dir/figures/compare.<format>`; returns the paths."""
    from swanbench.analysis.figures import save_figure

    folder = Path(out_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    return save_figure(plot_compare(frame, comparison, baseline), folder, "compare", formats)


def plot_compare(frame: pd.DataFrame, comparison: Comparison, baseline: str) -> Figure:
    """The comparison figure of `swanbench.analysis.compare.combined` runs."""

    machines = [s.label for s in comparison.sets]
    colors = {m: DEVICE_COLORS[i % len(DEVICE_COLORS)] for i, m in enumerate(machines)}
    measures = [m for m in with_byte_unit(frame) if numeric(frame, m[0]).notna().any()]
    cells = cell_columns(frame)
    keys = sorted(frame[cells].astype(str).drop_duplicates().itertuples(index=False, name=None))
    optimizers = optimizer_order(frame["optimizer"].unique(), baseline)
    opt_colors = optimizer_colors(optimizers)
    fig = Figure(figsize=(max(3.2 * len(measures), 7.5), 2.9 * len(keys) + 1.8), layout="constrained")
    axes = fig.subplots(len(keys), len(measures), squeeze=False)
    for r, key in enumerate(keys):
        rows = frame[(frame[cells].astype(str).apply(tuple, axis=1)) == tuple(key)]
        for c, (column, title, scale, unit) in enumerate(measures):
            _panel(axes[r, c], rows, column, scale, machines, colors, optimizers, opt_colors, baseline)
            axes[r, c].set_title(f"{' · '.join(key)}: {title}", fontsize=9)
            axes[r, c].set_ylabel(f"{title}{f' [{unit}]' if unit else ''}", fontsize=8)
    handles = [Patch(facecolor=colors[s.label], edgecolor="#555555",
                     label=f"{s.label}: " + "; ".join(device_limits(s)[:4])) for s in comparison.sets]
    fig.legend(handles=handles, loc="outside lower center", ncols=1, fontsize=7)
    fig.suptitle(f"{comparison.sets[0].first('suite')} on {len(machines)} devices: mean over ok seeds of the cells "
                 "every set ran\nfaint: a time too noisy to judge against the baseline on that device (the rule of "
                 "swanbench check)", fontsize=9)
    return fig


def _panel(ax, rows: pd.DataFrame, column: str, scale: float, machines: list[str], colors: dict[str, str],
           optimizers: list[str], opt_colors: dict[str, str], baseline: str) -> None:
    width = 0.8 / len(machines)
    for i, opt in enumerate(optimizers):
        for j, machine in enumerate(machines):
            mine = rows[(rows["optimizer"] == opt) & (rows["machine"] == machine)]
            value = numeric(mine, column).mean() / scale
            if not math.isfinite(value):
                continue
            base = rows[(rows["optimizer"].map(canonical_name) == baseline) & (rows["machine"] == machine)]
            faint = False
            if column in ("step_ms", "tokens_per_s") and not base.empty:
                verdict = noise.self_judge(column, mine) if canonical_name(opt) == baseline else \
                    noise.judge(column, mine, base)
                faint = verdict is not None and verdict.noisy
            ax.bar(i - 0.4 + width * (j + 0.5), value, width=width * 0.95, color=colors[machine],
                   edgecolor="#555555", linewidth=0.5, alpha=0.3 if faint else 1.0, hatch="//" if faint else None)
    ax.set_xticks(range(len(optimizers)))
    ax.set_xticklabels(optimizers, fontsize=8)
    for tick, opt in zip(ax.get_xticklabels(), optimizers):
        tick.set_color(opt_colors.get(opt, "black"))
        tick.set_fontweight("bold")
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.25)
