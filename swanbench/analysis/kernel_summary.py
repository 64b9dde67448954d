"""Kernel suites in short: per operator and input dtype, the method nearest the machine's own limit, and how near.

Shared by the kernels figure (`swanbench.analysis.figures.kernels`), the report's summary table and the
console at the end of a kernel suite. A ratio against a limit is only as good as the limit: when the
machine's matmul rate or copy bandwidth was measured at a size dominated by call overhead (the tiny
`whitening-quick` suite measures a 128 x 128 matmul) an operator can appear to run at 1000x the "limit";
such ratios (an operator above `PLAUSIBLE_FRACTION` of matmul, or under `1 / PLAUSIBLE_FRACTION` copies'
time) are withheld with that reason, never printed.
"""

from __future__ import annotations

import math

import pandas as pd

from swanbench.analysis.markdown import cell_text, fmt_number, intish, md_table, mib, sci, sortable
from swanbench.analysis.results import OK, Results, numeric

MACHINE_OPERATORS = ("matmul", "copy")
# Above this fraction of the measured matmul rate (or faster than this many times one copy) the limit itself
# was not measured meaningfully.
PLAUSIBLE_FRACTION = 1.5
# A case whose calls spread wider than their median (IQR / median above 1, as in the regression gate's
# "too noisy to judge") is flagged: its ratio is the machine's load as much as the operator's.
NOISY_IQR = 1.0
LIMIT_NOT_MEANINGFUL = "n/a: the machine's limit was measured at too small a size to compare with"


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


def bound_of(rows: pd.DataFrame, limits: pd.DataFrame | None = None) -> str:
    """"compute", "memory" or "other": the `bound` column, else whichever measured limit the rows come
    closer to (their median rate as a fraction of the best matmul, and of the copy bandwidth)."""
    if "bound" in rows.columns and rows["bound"].notna().any():
        return str(rows["bound"].dropna().iloc[0])
    fractions = {}
    for bound, measure, column in (("compute", "matmul", "tflops"), ("memory", "copy", "gbps")):
        best = numeric(limits[limits["measure"].astype(str) == measure], column).max() if limits is not None \
            else math.nan
        rate = numeric(rows, column).median()
        if math.isfinite(best) and best > 0 and math.isfinite(rate):
            fractions[bound] = rate / best
    return max(fractions, key=fractions.get) if fractions else "other"


def limit_ratio(rows: pd.DataFrame, limits: pd.DataFrame, bound: str) -> tuple[pd.Series, str]:
    """Per row, how it compares with the machine's limit, and how to say it: compute-bound rows as a fraction
    of the best matmul rate (executed flops when recorded), memory-bound rows as multiples of one copy of
    the matrix (else a fraction of the copy bandwidth); other rows by time alone."""
    if bound == "compute":
        executed = numeric(rows, "tflops_executed") / numeric(rows, "matmul_tflops_peak")
        if executed.notna().any():  # the flops the implementation runs, against the run's best matmul rate
            return executed, "of the best matmul\n(executed flops)"
        if numeric(rows, "frac_of_matmul_peak").notna().any():
            return numeric(rows, "frac_of_matmul_peak"), "of the best matmul\n(cost-model flops)"
        matmul = limits[limits["measure"].astype(str) == "matmul"]
        best = numeric(matmul[matmul["dtype"].isin(_compute_dtypes(rows))], "tflops").max()
        return numeric(rows, "tflops") / best, "of matmul"
    if bound == "memory":
        if numeric(rows, "x_copy").notna().any():
            return numeric(rows, "x_copy"), "x one copy"
        best = numeric(limits[limits["measure"].astype(str) == "copy"], "gbps").max()
        return numeric(rows, "gbps") / best, "of copy bandwidth"
    return numeric(rows, "ms_median"), "ms"


def best_method(rows: pd.DataFrame, limits: pd.DataFrame) -> tuple[str | None, str]:
    """The label of the method nearest the machine's limit (median over its sizes) and its headline:
    the range of that ratio over the larger half of the sizes measured (small ones are call overhead)."""
    bound = bound_of(rows, limits)
    ratio, unit = limit_ratio(rows, limits, bound)
    frame = rows.assign(_ratio=ratio).dropna(subset=["_ratio"])
    if frame.empty:
        return None, ""
    lower_better = unit in ("x one copy", "ms")
    medians = frame.groupby("_label")["_ratio"].median()
    label = medians.idxmin() if lower_better else medians.idxmax()
    mine = frame[frame["_label"] == label]
    cut = mine["_size"].median()
    big = mine[mine["_size"] >= cut]["_ratio"]
    lo, hi = big.min(), big.max()
    if not plausible(lo, hi, unit):
        return label, LIMIT_NOT_MEANINGFUL
    if unit == "x one copy":
        text = f"{lo:.1f}-{hi:.1f}x one copy"
    elif unit == "ms":
        text = ""
    else:
        text = f"{lo:.0%}-{hi:.0%} {unit}"
    size = f"\nfrom {short_count(cut)} elements up" if text else ""
    spread = (numeric(mine, "ms_iqr") / numeric(mine, "ms_median"))[mine["_size"] >= cut].max()
    noisy = f"\nnoisy: IQR/median up to {spread:.1f}" if math.isfinite(spread) and spread > NOISY_IQR else ""
    return label, f"{text}{size}{noisy}"


def plausible(lo: float, hi: float, unit: str) -> bool:
    """Whether a ratio range can be a real comparison with the measured limit (see the module docstring)."""
    if unit == "ms":
        return True
    if unit == "x one copy":
        return lo >= 1.0 / PLAUSIBLE_FRACTION
    return hi <= PLAUSIBLE_FRACTION


def summary(kernels: pd.DataFrame, machine: pd.DataFrame) -> pd.DataFrame:
    """One row per (operator, input dtype): the method nearest the limit, its time at the largest size it
    ran, how near the limit it is (or why that is not said), and how many methods were measured."""
    work = kernel_rows(kernels)
    if "batch" in work.columns:
        work = work[pd.to_numeric(work["batch"], errors="coerce").fillna(1) <= 1]
    work = work[~work["_compiled"].astype(bool)]
    rows = []
    for (operator, dtype), group in work.groupby(["operator", "dtype"], sort=True):
        label, headline = best_method(group, machine)
        if label is None:
            continue
        mine = group[group["_label"] == label]
        largest = mine.loc[mine["_size"].idxmax()]
        rows.append({"operator": operator, "dtype": dtype,
                     "best method": label.split("[", 1)[1].rstrip("]") if "[" in label else label,
                     "largest shape": f"{int(largest['rows'])}x{int(largest['cols'])}",
                     "ms there": float(largest["ms_median"]),
                     "against the machine's limit": _one_line(headline),
                     "methods": int(group["_label"].nunique())})
    return pd.DataFrame(rows)


def _one_line(headline: str) -> str:
    """The figure's multi-line headline as one table cell: `64%-79% of ... up; noisy: ...`."""
    return headline.replace("\nnoisy", "; noisy").replace("\n", " ").strip()


def short_count(n: float) -> str:
    """2801664 -> `2.8M`, 65536 -> `66k`."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else f"{n:.0f}"


def _compute_dtypes(rows: pd.DataFrame) -> list[str]:
    """The dtypes the arithmetic of these rows ran in: whitening computes in fp32 even for bf16 input."""
    column = "compute_dtype" if "compute_dtype" in rows.columns else "dtype"
    return sorted(str(d) for d in rows[column].dropna().unique())


# ---------------------------------------------------------------------------------------------------------
# The report's kernel sections


def kernels_section(kernels: pd.DataFrame) -> str:
    """The operator micro-benchmarks, one row each, machine reference rows (matmul, copy) first."""
    frame = kernels.copy()
    frame["_machine"] = frame.get("operator", pd.Series("", index=frame.index)).isin(["matmul", "copy"])
    order = [c for c in ("_machine", "operator", "method", "dtype", "rows", "cols") if c in frame.columns]
    frame = frame.sort_values(order, ascending=[c != "_machine" for c in order], key=sortable)
    columns = [("operator", str), ("method", str), ("device", str), ("dtype", str), ("compile", str),
               ("batch", intish), ("rows", intish), ("cols", intish), ("status", str),
               ("ms_median", fmt_number), ("ms_iqr", fmt_number), ("tflops", fmt_number),
               ("frac_of_matmul_peak", _fraction), ("gbps", fmt_number), ("frac_of_bandwidth", _fraction),
               ("peak_bytes", mib), ("rel_error", sci), ("skip_reason", str)]
    present = [(c, f) for c, f in columns if c in frame.columns and frame[c].notna().any()]
    rows = [[cell_text(r[c], f) for c, f in present] for _, r in frame.iterrows()]
    header = [("peak_bytes [MiB]" if c == "peak_bytes" else c) for c, _ in present]
    return md_table(header, rows) + "\n"


def kernel_summary_parts(results: Results) -> list[str]:
    """The kernel suite in one table: per operator and dtype, the method nearest the machine's limit."""
    frame = summary(results.kernels, machine_limits(results))
    if frame.empty:
        return []
    rows = [[fmt_number(v) if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    return ["### Summary: the best method per operator\n",
            "Best = nearest the machine's own limit measured in the same run (compute-bound operators: the rate of "
            "the flops they execute against the best matmul; memory-bound: their time in copies of the matrix), "
            "over the larger half of the sizes measured; one matrix per call.\n",
            md_table(list(frame.columns), rows) + "\n"]


def _fraction(value: float) -> str:
    """A `frac_of_*` value as a percentage, or n/a when the limit cannot have been measured meaningfully."""
    return "n/a" if value > PLAUSIBLE_FRACTION else f"{value:.0%}"


def machine_section(machine: pd.DataFrame) -> str:
    """machine.csv: the matmul rate per dtype and size and the copy bandwidth, measured in the same run."""
    columns = [("measure", str), ("device", str), ("dtype", str), ("size", intish), ("ms_median", fmt_number),
               ("tflops", fmt_number), ("gbps", fmt_number)]
    present = [(c, f) for c, f in columns if c in machine.columns and machine[c].notna().any()]
    rows = [[cell_text(r[c], f) for c, f in present] for _, r in machine.iterrows()]
    return md_table([c for c, _ in present], rows) + "\n"
