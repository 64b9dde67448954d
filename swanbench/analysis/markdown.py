"""Markdown for reports: numbers, byte counts and tables as the report and the comparison write them."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import pandas as pd

from swanbench.analysis.results import MIB, bytes_unit


def fmt_number(value: float) -> str:
    """3 significant digits, thousands separators for large numbers; NaN as n/a."""
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value:.3g}"
    # 999.7 rounds to "1e+03" in 3 significant digits: large numbers are written out instead.
    return f"{value:,.0f}" if abs(value) >= 1000 or "e+" in text else text


def fmt_bytes(value: float) -> str:
    """`85.3 MiB`, `3.91 GiB`: byte counts with their own unit (1024-based), for mixed-size tables."""
    if not math.isfinite(value):
        return "n/a"
    if abs(value) < 1024:
        return f"{value:.0f} B"
    scale, unit = bytes_unit(abs(value))
    return f"{fmt_number(value / scale)} {unit}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table; `|` inside cells is escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), line(["---"] * len(header))]
    lines += [line(r) for r in rows]
    return "\n".join(lines)


def sortable(column: pd.Series) -> pd.Series:
    return column if column.dtype != object else column.astype(str)


def cell_text(value: object, fmt) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    try:
        return fmt(float(value)) if fmt is not str else str(value)
    except (TypeError, ValueError):
        return str(value)


def intish(value: float) -> str:
    return str(int(value))


def mib(value: float) -> str:
    return fmt_number(value / MIB)


def sci(value: float) -> str:
    return f"{value:.2e}"
