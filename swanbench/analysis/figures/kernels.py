"""Kernels: operator time and achieved rate against matrix size (log-log), with the machine's measured limits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from swanbench.analysis.figures.common import (FALLBACK_CMAPS, MACHINE_OPERATORS, METHOD_MARKERS, OPERATOR_CMAPS,
                                               Context, SkipFigure)
from swanbench.analysis.results import OK, Results, numeric


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
