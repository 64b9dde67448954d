"""Perplexity: eval perplexity against tokens and against training seconds, mean over seeds with a band."""

from __future__ import annotations

import logging
import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure

from swanbench.analysis.figures.common import Context, Series, SkipFigure, facet_rows, mean_ok, series_of, series_rows
from swanbench.analysis import noise
from swanbench.analysis.results import ALWAYS_AXES, OK, canonical_name, group_keys, numeric, select

log = logging.getLogger(__name__)


def curve_frame(ctx: Context) -> pd.DataFrame:
    """curves.csv with a perplexity column (`eval_ppl`, else exp(eval_loss)) and each run's final status."""
    curves = ctx.results.curves
    if curves is None or curves.empty:
        raise SkipFigure("no curves.csv" if curves is None else "curves.csv has no rows")
    frame = curves.copy()
    ppl = numeric(frame, "eval_ppl")
    frame["_ppl"] = ppl.where(ppl.notna(), np.exp(numeric(frame, "eval_loss")))
    frame["_tokens"] = numeric(frame, "tokens")
    frame["_seconds"] = numeric(frame, "train_seconds")
    finite = np.isfinite(frame["_ppl"]) & np.isfinite(frame["_tokens"])
    if not finite.any():
        raise SkipFigure("curves.csv has no finite eval perplexity with a token count")
    return frame


def mean_curve(rows: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per eval step over seeds: mean x (tokens or seconds), mean tokens, and mean/min/max perplexity."""
    rows = rows[np.isfinite(rows["_ppl"]) & np.isfinite(rows[x])]
    grouped = rows.groupby("step" if "step" in rows.columns else x)
    return pd.DataFrame({"x": grouped[x].mean(), "tokens": grouped["_tokens"].mean(),
                         "mean": grouped["_ppl"].mean(), "lo": grouped["_ppl"].min(),
                         "hi": grouped["_ppl"].max()}).sort_values("x")


def plot_perplexity(ctx: Context) -> Figure:
    """Eval perplexity against tokens (and training seconds), one row per (model, device)."""
    curves = curve_frame(ctx)
    xs = [("_tokens", "training tokens [tokens]")]
    if np.isfinite(curves["_seconds"]).any():
        xs.append(("_seconds", "training time [s] (eval excluded)"))
    facets = group_keys(curves, ALWAYS_AXES)
    series = series_of(curves, ctx.baseline)
    fig = Figure(figsize=(5.2 * len(xs) + 2.2, 3.4 * len(facets) + 0.6), layout="constrained")
    axes = fig.subplots(len(facets), len(xs), squeeze=False)
    titles = {"_tokens": "against training tokens", "_seconds": "against training seconds"}
    notes: list[str] = []
    for r, (model, device) in enumerate(facets):
        frame = select(curves, ALWAYS_AXES, (model, device))
        for c, (x, xlabel) in enumerate(xs):
            notes += _perplexity_panel(axes[r, c], frame, series, x, ctx, model, device)
            axes[r, c].set_xlabel(xlabel)
            axes[r, c].set_title(f"{model} · {device}: eval perplexity {titles[x]}", fontsize=9)
        # The legend of the tokens panel (the seconds panel may grey its curves), beside the last panel.
        handles, labels = axes[r, 0].get_legend_handles_labels()
        axes[r, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    noisy = ("\n" + textwrap.fill("faint and dotted on the seconds axis: too noisy to judge against the baseline "
                                   "(the rule of swanbench check): " + "; ".join(dict.fromkeys(notes)),
                                   width=int(11 * fig.get_figwidth()))) if notes else ""
    fig.suptitle("Eval perplexity: mean over ok seeds, band = min–max over seeds; legend: peak lr, seeds\n"
                 f"★ = tokens to target; dashed grey = {ctx.baseline} final; dotted with × = a failed run{noisy}",
                 fontsize=9)
    return fig


def lr_text(runs: pd.DataFrame | None, rows: pd.DataFrame) -> str:
    """`lr 2e-3` for a series: the peak lr its runs recorded (runs.csv `lr`), several joined; "" if unknown."""
    if runs is None or "lr" not in runs.columns:
        return ""
    ids = set(rows["run_id"]) if "run_id" in rows.columns else set()
    values = numeric(runs[runs["run_id"].isin(ids)], "lr").dropna().unique()
    return ("lr " + "/".join(f"{v:.3g}" for v in sorted(values))) if len(values) else ""


def _seconds_noise(ctx: Context, model: str, device: str, series: Series):
    """The noise verdict of a series' step time against the baseline's in this facet (None: not judged)."""
    runs = ctx.results.runs
    if runs is None:
        return None
    facet = facet_rows(runs, model, device)
    rows = series_rows(facet, series)
    base = facet[facet["optimizer"].map(canonical_name) == ctx.baseline]
    if base.empty or canonical_name(series.optimizer) == ctx.baseline:
        return noise.self_judge("step_ms", rows)
    return noise.judge("step_ms", rows, base, series.optimizer, ctx.baseline)


def _perplexity_panel(ax, frame: pd.DataFrame, series: list[Series], x: str, ctx: Context, model: str,
                      device: str) -> list[str]:
    """Draw one panel; returns the reasons for curves greyed as too noisy (the seconds axis only)."""
    reasons = []
    for s in series:
        rows, label = series_rows(frame, s), s.label
        color = ctx.colors.get(s.optimizer, "black")
        ok = rows[rows["status"] == OK]
        verdict = _seconds_noise(ctx, model, device, s) if x == "_seconds" else None
        greyed = verdict is not None and verdict.noisy
        if greyed:
            reasons.append(f"{s.label}: step IQR/median {verdict.spreads[0]:.2f}")
        if not ok.empty:
            curve = mean_curve(ok, x)
            n = ok["run_id"].nunique()
            lr = lr_text(ctx.results.runs, ok)
            ax.plot(curve["x"], curve["mean"], color=color, linewidth=1.6, linestyle=":" if greyed else s.linestyle,
                    alpha=0.35 if greyed else 1.0, label=f"{label} ({lr + ', ' if lr else ''}n={n})")
            if greyed and len(curve):
                ax.annotate(f"{label}: too noisy", (curve["x"].iloc[-1], curve["mean"].iloc[-1]), fontsize=7,
                            color=color, alpha=0.8, xytext=(3, 0), textcoords="offset points", va="center")
            if n > 1:
                ax.fill_between(curve["x"], curve["lo"], curve["hi"], color=color, alpha=0.2, linewidth=0)
            _mark_target(ax, curve, _ok_runs_of(ctx, model, device, s), x, color, alpha=0.35 if greyed else 1.0)
        _draw_failed(ax, rows[rows["status"] != OK], x, label, color)
    target = _baseline_final(ctx, frame, model, device)
    if math.isfinite(target):
        ax.axhline(target, color="#555555", linestyle="--", linewidth=1,
                   label=f"{ctx.baseline} final: {target:.4g}")
    log_scale = _perplexity_yscale(ax)
    if x == "_tokens":
        ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
    ax.set_ylabel("eval perplexity (log scale)" if log_scale else "eval perplexity")
    ax.grid(True, which="both", alpha=0.25)
    return reasons


def _perplexity_yscale(ax) -> bool:
    """Log scale (ticks at 1, 2, 5 x 10^k) when the curves span more than 3x, else linear; True if log."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] or [[]])
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) == 0 or values.max() / values.min() <= 3:
        return False
    ax.set_yscale("log")
    # Over less than 1.5 decades ticks at 1, 2, 5 x 10^k leave one or two labels: use a finer set.
    fine = math.log10(values.max() / values.min()) < 1.5
    subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if fine else (1.0, 2.0, 5.0)
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    return True


def _ok_runs_of(ctx: Context, model: str, device: str, series: Series) -> pd.DataFrame:
    """The ok runs (runs.csv rows) behind one curve, for its tokens-to-target."""
    runs = ctx.results.runs
    if runs is None or any(a not in runs.columns for a in series.axes):
        return pd.DataFrame()
    rows = series_rows(facet_rows(runs, model, device), series)
    return rows[rows["status"] == OK]


def _mark_target(ax, curve: pd.DataFrame, runs: pd.DataFrame, x: str, color: str, alpha: float = 1.0) -> None:
    """A star on the mean curve at the mean tokens-to-target of the seeds that reached it."""
    tokens = numeric(runs, "tokens_to_target").dropna() if not runs.empty else pd.Series(dtype=float)
    curve = curve.dropna(subset=["tokens"]).sort_values("tokens")
    if tokens.empty or curve.empty:
        return
    at = float(tokens.mean())
    if not curve["tokens"].min() <= at <= curve["tokens"].max():
        log.debug("tokens_to_target %s lies outside the curve's tokens; not marked", at)
        return
    # The seconds panel: the measured seconds_to_target when the table has it, else the time at which the
    # mean curve had seen that many tokens.
    seconds = numeric(runs, "seconds_to_target").dropna()
    if x == "_tokens":
        x_at = at
    else:
        x_at = float(seconds.mean()) if len(seconds) else float(np.interp(at, curve["tokens"], curve["x"]))
    y = float(np.exp(np.interp(at, curve["tokens"], np.log(curve["mean"]))))
    ax.plot([x_at], [y], marker="*", markersize=13, color=color, markeredgecolor="black", linestyle="none",
            alpha=alpha)


def _draw_failed(ax, rows: pd.DataFrame, x: str, label: str, color: str) -> None:
    """Each failed run's own curve, dotted, ending in an x, labelled with its status."""
    labelled: set[str] = set()
    for run_id, run in rows.groupby("run_id", sort=True):
        run = run[np.isfinite(run["_ppl"]) & np.isfinite(run[x])].sort_values(x)
        status = str(run["status"].iloc[0]) if len(run) else str(rows.loc[rows["run_id"] == run_id, "status"].iloc[0])
        name = f"{label}: {status}"
        if run.empty:
            continue
        ax.plot(run[x], run["_ppl"], color=color, linestyle=":", linewidth=1, alpha=0.8,
                label=None if name in labelled else name)
        ax.plot(run[x].iloc[-1:], run["_ppl"].iloc[-1:], marker="x", color=color, markersize=8, linestyle="none")
        labelled.add(name)


def _baseline_final(ctx: Context, frame: pd.DataFrame, model: str, device: str) -> float:
    """The baseline's mean final eval perplexity in this facet: runs.csv, else the last curve point."""
    runs = ctx.results.runs
    if runs is not None:
        rows = facet_rows(runs, model, device)
        value = mean_ok(rows[rows["optimizer"].map(canonical_name) == ctx.baseline], "final_eval_ppl")
        if math.isfinite(value):
            return value
    rows = frame[(frame["optimizer"].map(canonical_name) == ctx.baseline) & (frame["status"] == OK)]
    rows = rows[np.isfinite(rows["_ppl"])]
    if rows.empty:
        return math.nan
    last = rows.sort_values("_tokens").groupby("run_id").tail(1)
    return float(last["_ppl"].mean())
