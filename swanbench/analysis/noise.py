"""Is a time difference a result, or the machine's noise? The regression gate's judgement, inside one results set.

`swanbench check` calls a time comparison "too noisy to judge" when the runs' own spread hides any change
smaller than its widest band (`swanbench.analysis.tolerances.noise_band` / `too_noisy`: `iqr_factor` times
the root sum of squares of the runs' relative spreads, IQR / median, against `max_band`). The report, the
figures and the perplexity-against-seconds panel ask the same question of an optimizer against the baseline
in the same cell, with the same rule for the column (the built-in tolerance classes of `times`,
`optimizer_times` and `throughput`), and show such a difference greyed or withheld, with the reason.

Relative spread of a cell: the mean within-run IQR over its ok seeds divided by their mean median.
Also here: `load_note`, a line on how busy the machine was while the runs measured (`load_avg_*`, steal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import pandas as pd

from swanbench.analysis.check import spread_columns
from swanbench.analysis.results import OK, numeric
from swanbench.analysis.tolerances import MetricRule, default_tolerances, noise_band, too_noisy


@dataclass(frozen=True)
class Noise:
    """The judgement of one optimizer's time against the baseline's in one cell."""

    noisy: bool
    spreads: tuple[float, float]  # relative spread (IQR / median) of the optimizer's and the baseline's runs
    band: float
    reason: str = ""


# Sums of step times the gate does not compare itself: judged as step_ms is, with step_ms's spread.
SUMS_OF_STEPS = {"train_seconds": "step_ms", "seconds_to_target": "step_ms"}


@lru_cache(maxsize=None)
def rule_for(column: str) -> MetricRule | None:
    """The gate's ratio rule for a time column (step_ms, forward_backward_ms, tokens_per_s, ...), or None."""
    metric = SUMS_OF_STEPS.get(column, column)
    rules = default_tolerances().resolve([metric]).rules
    rule = next((r for r in rules if r.metric == metric), None)
    return rule if rule is not None and rule.compare == "ratio" else None


def spread_metric(column: str) -> str:
    """Whose IQR stands for a column's spread: its own, or the rule's `spread_metric` (tokens/s: step_ms)."""
    if column in SUMS_OF_STEPS:
        return SUMS_OF_STEPS[column]
    rule = rule_for(column)
    return (rule.spread_metric if rule is not None and rule.spread_metric else column)


def relative_spread(rows: pd.DataFrame, column: str) -> float | None:
    """Mean within-run IQR / mean median of `column`'s spread metric over the ok rows; None without an IQR."""
    metric = spread_metric(column)
    ok = rows[rows["status"] == OK] if "status" in rows.columns else rows
    median = numeric(ok, metric).dropna()
    iqr = next((numeric(ok, c).dropna() for c in spread_columns(metric) if numeric(ok, c).notna().any()), None)
    if iqr is None or median.empty or not iqr.size or median.mean() <= 0:
        return None
    return float(iqr.mean() / median.mean())


def judge(column: str, rows: pd.DataFrame, base_rows: pd.DataFrame, name: str = "", baseline: str = ""
          ) -> Noise | None:
    """Noise of `rows` (one optimizer in a cell) against `base_rows` (the baseline there) for `column`;
    None when the column has no ratio rule or either side has no spread recorded."""
    rule = rule_for(column)
    if rule is None:
        return None
    a, b = relative_spread(rows, column), relative_spread(base_rows, column)
    if a is None or b is None:
        return None
    band = noise_band(rule, a, b)
    noisy = too_noisy(rule, band)
    reason = ""
    if noisy:
        metric = spread_metric(column)
        reason = (f"too noisy to judge: {metric} IQR/median {a:.2f}{f' ({name})' if name else ''} and {b:.2f}"
                  f"{f' ({baseline})' if baseline else ''}; the gate's band {band:.2f} > {rule.max_band:g}")
    return Noise(noisy, (a, b), band, reason)


def self_judge(column: str, rows: pd.DataFrame) -> Noise | None:
    """Noise of one optimizer's own runs (no baseline to compare with): its spread counted on both sides."""
    return judge(column, rows, rows)


def load_note(runs: pd.DataFrame) -> str | None:
    """`load average 6.1-8.3 (2 cores: queued), CPU steal 0.0-0.4%` over the runs, or None when not recorded."""
    loads = pd.concat([numeric(runs, "load_avg_start"), numeric(runs, "load_avg_end")]).dropna()
    if loads.empty:
        return None
    cores = numeric(runs, "cpu_count").dropna()
    text = f"load average {loads.min():.1f}-{loads.max():.1f}"
    if not cores.empty:
        n = int(cores.max())
        text += f" on {n} cores" + (" (processes queued for a core: times are the machine's as much as the "
                                    "optimizer's)" if loads.max() > n else "")
    steal = numeric(runs, "cpu_steal_pct").dropna()
    if not steal.empty:
        text += f"; CPU steal {steal.min():.1f}-{steal.max():.1f}%"
    return text


def busy(runs: pd.DataFrame) -> bool:
    """Whether any run started or ended with more runnable processes than cores."""
    cores = numeric(runs, "cpu_count")
    top = pd.concat([numeric(runs, "load_avg_start") - cores, numeric(runs, "load_avg_end") - cores]).dropna()
    return bool((top > 0).any())


def noisy_optimizers(runs: pd.DataFrame, column: str, optimizers: Sequence[str], baseline: str) -> dict[str, Noise]:
    """Per optimizer (baseline included, judged on its own spread) its noise for `column`, over all its runs."""
    base = runs[runs["optimizer"] == baseline]
    out = {}
    for opt in optimizers:
        rows = runs[runs["optimizer"] == opt]
        verdict = self_judge(column, rows) if opt == baseline or base.empty else judge(column, rows, base, opt,
                                                                                     baseline)
        if verdict is not None:
            out[opt] = verdict
    return out


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
