"""Figures of a results directory, drawn from its tables alone (runs.csv, curves.csv, kernels.csv).

Six figures, each written as PNG (screens) and SVG or PDF (papers) under `RESULTS/figures/`:

- `memory`: where the memory goes, stacked by role, per optimizer, faceted by model and device;
- `time`: the step time split into forward+backward, optimizer step and whitening;
- `kernels`: operator time and achieved rate against matrix size (log-log), with the machine's measured
  matmul rate (and copy bandwidth) drawn as the limit;
- `perplexity`: eval perplexity against tokens and against training seconds, mean over seeds with a
  min-max band, the baseline's final perplexity and each optimizer's tokens-to-target marked;
- `pareto`: peak memory against final perplexity, per model, with the non-dominated front;
- `tuning`: each tuning trial's final eval loss against its lr, per optimizer, the chosen setting marked
  (from tuning.csv, when the suite tuned).

One module per figure; `common` holds the shared parts. A figure whose data is absent is skipped with a
logged reason, never drawn empty. Every optimizer has one colour in every figure (its registry entry's,
then a fallback cycle over the unknown names in sorted order). Matplotlib is used through `Figure` objects with the Agg canvas, never pyplot, so drawing
touches no global state and leaks no windows.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

from matplotlib.figure import Figure

from swanbench.analysis.figures.common import FORMATS, PNG_DPI, Context, FigureSet, SkipFigure, optimizer_colors
from swanbench.analysis.figures.kernels import plot_kernels
from swanbench.analysis.figures.memory import plot_memory
from swanbench.analysis.figures.pareto import plot_pareto
from swanbench.analysis.figures.perplexity import plot_perplexity
from swanbench.analysis.figures.time import plot_time
from swanbench.analysis.figures.tuning import plot_tuning
from swanbench.analysis.results import (FIGURES_DIR, baseline_of, canonical_name, load_results, resolve_baseline,
                                        with_targets)

log = logging.getLogger(__name__)

FIGURES: dict[str, Callable[[Context], Figure]] = {
    "memory": plot_memory,
    "time": plot_time,
    "kernels": plot_kernels,
    "perplexity": plot_perplexity,
    "pareto": plot_pareto,
    "tuning": plot_tuning,
}


def save_figure(fig: Figure, out_dir: Path, name: str, formats: Sequence[str]) -> list[Path]:
    """Write `fig` once per format, each atomically (temp file + rename), and return the paths."""
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        tmp = out_dir / f".{name}.{fmt}.tmp"
        # No timestamp in SVG/PDF metadata, so re-drawing unchanged tables gives byte-identical papers' figures.
        metadata = {"Date": None} if fmt in ("svg", "pdf") else None
        fig.savefig(tmp, format=fmt, dpi=PNG_DPI if fmt == "png" else None, metadata=metadata)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    formats = tuple(f.lower().lstrip(".") for f in formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown figure format(s) {unknown or '(none)'}; use {', '.join(FORMATS)}")
    return formats


def draw_figures(results_dir: Path, out_dir: Path | None = None, formats: Sequence[str] = ("png", "svg"),
                 baseline: str | None = None, only: Sequence[str] | None = None) -> FigureSet:
    """Draw every figure the tables support; the others are skipped with their reason."""
    formats = check_formats(formats)
    unknown = sorted(set(only or ()) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    results = load_results(Path(results_dir))
    out_dir = Path(out_dir) if out_dir is not None else Path(results_dir) / FIGURES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for frame in (results.runs, results.curves) if frame is not None for n in frame["optimizer"]]
    baseline = baseline_of(results.runs, baseline)
    results = with_targets(results, resolve_baseline(results.runs, baseline) or baseline)
    ctx = Context(results, optimizer_colors(sorted(set(names))), canonical_name(baseline))
    done = FigureSet()
    for name, draw in FIGURES.items():
        if only is not None and name not in only:
            continue
        try:
            fig = draw(ctx)
        except SkipFigure as reason:
            done.skipped[name] = str(reason)
            log.info("figure %s skipped: %s", name, reason)
            # A figure drawn from an earlier state of the tables would now be stale: remove it.
            for fmt in FORMATS:
                (out_dir / f"{name}.{fmt}").unlink(missing_ok=True)
            continue
        done.paths += save_figure(fig, out_dir, name, formats)
    return done


def plot_results(results_dir: Path, out_dir: Path | None = None, formats: Sequence[str] = ("png", "svg")
                 ) -> list[Path]:
    """Draw every figure the tables of `results_dir` support into `out_dir` (default RESULTS/figures)."""
    return draw_figures(results_dir, out_dir, formats).paths
