"""`swanbench export RESULTS`: the tables into a local experiment tracker (library: swanbench.analysis.export)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Tracker(str, Enum):
    tensorboard = "tensorboard"


def export(
    results: Annotated[Path, typer.Argument(help="Results directory holding runs.csv (and curves.csv).")],
    to: Annotated[Tracker, typer.Option("--to", help="The tracker: tensorboard (event files, offline).")]
    = Tracker.tensorboard,
    out: Annotated[Optional[Path], typer.Option(
        help="Where the tracker's files go (default RESULTS/tensorboard); view with `tensorboard --logdir`.")]
    = None,
) -> None:
    """Write every run's curve, measures and identity as TensorBoard event files, from the tables alone."""
    from swanbench.analysis.export import TrackerMissing, export_tensorboard
    from swanbench.tables import TableError

    try:
        written = export_tensorboard(results, out)
    except (TableError, TrackerMissing, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    where = out if out is not None else results / "tensorboard"
    typer.echo(f"wrote {len(written)} run(s) to {where} (view: tensorboard --logdir {where})")
