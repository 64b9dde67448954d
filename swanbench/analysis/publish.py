"""Publishing a results directory: the last stage of the flow, an explicit step after the tables are assembled.

`publish_suite(out_dir)` writes, from the tables alone and in this order: the quality analysis
(summary.csv and verdicts.csv, when the baseline ran), the figures (figures/*.png|svg) and the report
(report.md, which links the figures and shows the verdicts). `swanbench run` calls it after a suite ran;
`swanbench report` and `swanbench plot` redo parts of it. A failing part is reported and never costs the
measurements: the tables are already on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.markup import escape

from swanbench.analysis.results import annotated_for, baseline_of, resolve_baseline
from swanbench.schema import CURVES_FILE, RUNS_FILE, SUMMARY_FILE, VERDICTS_FILE
from swanbench.tables import read_table, write_rows_atomic
from swanbench.terminal import own_command  # the command line of this process, kept in command.txt

COMMAND_FILE = "command.txt"


def write_analysis(results_dir: Path, baseline: str | None = None) -> dict[str, Path]:
    """Read runs.csv and curves.csv (and tuning.csv when the suite tuned) in `results_dir`, write summary.csv
    and verdicts.csv beside them.

    baseline: the suite's declared one (runs.csv `suite_baseline`) unless given. runs.csv is not rewritten
    (the runner owns it); its tokens-to-target columns are used as assembled when they are for this
    baseline. Raises tables.TableError if a table is missing or unreadable.
    """
    from swanbench.analysis.quality import analyze

    results_dir = Path(results_dir)
    runs = read_table(results_dir / RUNS_FILE, required=["run_id", "optimizer", "seed"])
    curves = read_table(results_dir / CURVES_FILE, required=["run_id", "tokens", "eval_loss"])
    baseline = baseline_of(runs, baseline)
    from swanbench.analysis.tuning import read_tuning

    result = analyze(runs, curves, baseline, annotated=annotated_for(runs, baseline), tuning=read_tuning(results_dir))
    written = {}
    for name, file in (("summary", SUMMARY_FILE), ("verdicts", VERDICTS_FILE)):
        frame = result[name]
        if frame.empty:  # nothing to decide (only the baseline ran): no table, and no stale one left behind
            (results_dir / file).unlink(missing_ok=True)
            continue
        rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
        written[name] = write_rows_atomic(results_dir / file, rows, list(frame.columns))
    return written


def write_quality(out_dir: Path, baseline: str | None = None) -> dict[str, Path]:
    """summary.csv and verdicts.csv, when the baseline has runs to compare with (else nothing: no target;
    a kernel suite has no runs.csv at all)."""
    if not (Path(out_dir) / RUNS_FILE).is_file():
        return {}
    runs = read_table(Path(out_dir) / RUNS_FILE, required=["optimizer"])
    if resolve_baseline(runs, baseline_of(runs, baseline)) is None:
        return {}
    return write_analysis(out_dir, baseline)


def publish_suite(out_dir: Path, console: Any = None, *, baseline: str | None = None,
                  command: str | None = None, formats: Sequence[str] = ("png", "svg")) -> dict[str, Any]:
    """Quality analysis, figures, report: each part in turn; one that fails is reported, the rest still run."""
    from swanbench.analysis.figures import draw_figures
    from swanbench.analysis.report import write_report

    out_dir = Path(out_dir)
    command = command or own_command()
    if command:
        (out_dir / COMMAND_FILE).write_text(command + "\n")
    steps = (("quality", lambda: write_quality(out_dir, baseline)),
             ("figures", lambda: draw_figures(out_dir, formats=formats, baseline=baseline)),
             ("report", lambda: write_report(out_dir, baseline=baseline, command=command)))
    done: dict[str, Any] = {}
    for name, step in steps:
        try:
            done[name] = step()
        except Exception as exc:  # a figure must never cost the measurements
            _say(console, f"[yellow]warning:[/] {name} failed: {type(exc).__name__}: {escape(str(exc))}")
    _say(console, escape(_summary(out_dir, done)))  # paths and reasons are data, e.g. "no [tune] table"
    return done


def _summary(out_dir: Path, done: dict[str, Any]) -> str:
    parts = []
    if done.get("quality"):
        parts.append("quality: " + ", ".join(str(p) for p in done["quality"].values()))
    figures = done.get("figures")
    if figures is not None:
        parts.append(f"figures: {len(figures.paths)} files in {out_dir / 'figures'}"
                     + "".join(f"; {name} skipped ({why})" for name, why in figures.skipped.items()))
    if done.get("report"):
        parts.append(f"report: {done['report']}")
    return "\n".join(parts)


def _say(console: Any, text: str) -> None:
    if console is not None and text:
        console.print(text)
