"""Tuning: each trial's final eval loss against its lr, per optimizer, from tuning.csv.

One panel per model; per optimizer (its colour) every trial setting as a faint dot (mean over tuning seeds)
and a line through the best loss at each lr (the other tuned hyperparameters at their best there); the
chosen setting is a star, ringed when it sits at an edge of its grid; extension points (the edge rule) are
open circles; a setting with a failed or diverged seed is an x at the panel's top. `lr` is each optimizer's
own: AdamW's peak lr, the hybrids' global lr (their matrix group at lr x alpha for SWAN and SinkGD, Muon's
lr for muon-nomomentum; adamw_lr, when tuned, sets the rest), so positions compare within an optimizer.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from swanbench.analysis.figures.common import Context, SkipFigure, empty_panel
from swanbench.analysis.results import optimizer_order
from swanbench.analysis.tuning import read_tuning, tuned_names
from swanbench.schema import OK


def _settings(rows: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """One row per setting: its tuned values, mean final loss over seeds (NaN if any seed failed), chosen,
    at_edge, extension."""
    frame = rows.copy()
    frame["loss"] = pd.to_numeric(frame["final_eval_loss"], errors="coerce")
    frame.loc[frame["status"] != OK, "loss"] = np.nan
    keys = [n for n in names if n in frame.columns]
    frame[keys] = frame[keys].astype(str)  # betas pairs are JSON text: group on the text
    grouped = frame.groupby(keys, sort=False, dropna=False)
    out = grouped.agg(loss=("loss", lambda x: x.mean() if x.notna().all() else np.nan),
                      chosen=("chosen", lambda x: x.astype(str).str.lower().eq("true").any()),
                      at_edge=("at_edge", lambda x: x.astype(str).str.lower().eq("true").any()),
                      extension=("extension", "max")).reset_index()
    out["lr"] = pd.to_numeric(out["lr"], errors="coerce")
    return out


def plot_tuning(ctx: Context) -> Figure:
    tuning = read_tuning(ctx.results.results_dir)
    if tuning is None or tuning.empty:
        raise SkipFigure("no tuning.csv (the suite has no [tune] table)")
    if "lr" not in tuning.columns:
        raise SkipFigure("tuning.csv has no lr column")
    models = list(dict.fromkeys(str(m) for m in tuning["model"]))
    fig = Figure(figsize=(max(4.6 * len(models), 7.5), 4.4), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        _panel(ax, tuning[tuning["model"].astype(str) == model], ctx)
        ax.set_title(model, fontsize=10)
    budget = int(pd.to_numeric(tuning["budget"]).max())
    tokens = ", ".join(f"{int(t):,}" for t in sorted(set(pd.to_numeric(tuning["tokens"]))))
    fig.suptitle(f"Tuning: final eval loss (token-weighted, mean over tuning seeds) against lr\n{budget} grid "
                 f"trials per optimizer, {tokens} tokens each; line: best at each lr; star: chosen (ringed: at an "
                 "edge)\nopen circle: added by the edge rule; x at the top: a failed or diverged seed", fontsize=9)
    return fig


def _panel(ax, rows: pd.DataFrame, ctx: Context) -> None:
    drawn, failed_at = False, []
    for optimizer in optimizer_order(rows["optimizer"].unique()):
        mine = rows[rows["optimizer"] == optimizer]
        for _, group in mine.groupby("group_id", sort=False):
            settings = _settings(group, tuned_names(group))
            color = ctx.colors.get(optimizer, "black")
            ok = settings[settings["loss"].notna()]
            failed_at += [(lr, color) for lr in settings.loc[settings["loss"].isna(), "lr"]]
            if ok.empty:
                continue
            drawn = True
            best = ok.groupby("lr")["loss"].min().sort_index()
            ax.plot(best.index, best.values, color=color, linewidth=1.5, label=optimizer)
            grid = ok[ok["extension"] == 0]
            added = ok[ok["extension"] > 0]
            ax.scatter(grid["lr"], grid["loss"], color=color, s=14, alpha=0.45, zorder=2)
            ax.scatter(added["lr"], added["loss"], facecolors="none", edgecolors=color, s=40, zorder=3)
            chosen = ok[ok["chosen"]]
            ax.scatter(chosen["lr"], chosen["loss"], marker="*", color=color, s=140, zorder=4,
                       edgecolors="black", linewidths=0.6)
            edge = chosen[chosen["at_edge"]]
            ax.scatter(edge["lr"], edge["loss"], facecolors="none", edgecolors="#b22222", s=320, linewidths=1.5,
                       zorder=5)
    if not drawn:
        empty_panel(ax, "no trial finished ok")
        return
    top = ax.get_ylim()[1]
    for lr, color in failed_at:
        if math.isfinite(lr):
            ax.scatter([lr], [top], marker="x", color=color, s=40, zorder=4, clip_on=False)
    ax.set_xscale("log")
    ax.set_xlabel("lr (each optimizer's own)", fontsize=8)
    ax.set_ylabel("final eval loss [nats]")
    ax.grid(True, alpha=0.25, which="both")
    ax.legend(fontsize=7)
