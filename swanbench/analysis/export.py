"""Results into the tools people already use: TensorBoard event files, written from the tables alone.

`export_tensorboard(RESULTS, LOGDIR)` writes one TensorBoard run per row of runs.csv, LOGDIR/<run_id>/:

- the curve (curves.csv) as scalars against the optimizer step: `curve/eval_loss`, `curve/eval_ppl`,
  `curve/train_loss`, `curve/lr`, `curve/train_seconds`; and against tokens (TensorBoard's step axis is an
  integer, so the token count is the step): `by_tokens/eval_loss`, `by_tokens/train_loss`;
- the run's numeric measures and estimates (memory in bytes, times in ms, as in runs.csv) as scalars
  `run/<column>` at its last step;
- its identity (optimizer, model, device, dtype, shapes, seed, status) and hyperparameters as the HParams
  dashboard's session (every axis a filter) and as a text table `run/identity`.

TensorBoard is local and offline (`tensorboard --logdir LOGDIR`); event files are written with
`torch.utils.tensorboard` and need the `tensorboard` package (the extra `swanbench[tracking]`). Exporting
again replaces a run's earlier event files, so the export mirrors the tables.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from swanbench import schema
from swanbench.tables import TableError, read_table

__all__ = ["export_tensorboard", "TrackerMissing", "CURVE_TAGS", "TOKEN_TAGS", "IDENTITY_TAGS"]

CURVE_TAGS = ("eval_loss", "eval_ppl", "train_loss", "lr", "train_seconds")
TOKEN_TAGS = ("eval_loss", "train_loss")
IDENTITY_TAGS = ("optimizer", "model", "device", "device_name", "dtype", "seq_len", "batch_size", "grad_accum",
                 "world_size", "parallelism", "seed", "status", "suite", "data")
_RUN_ROLES = (schema.MEASURE, schema.ESTIMATE, schema.ANNOTATION, schema.SPREAD)


class TrackerMissing(RuntimeError):
    """The tracker's package is not installed (one line naming what to install)."""


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
    except ImportError as exc:
        raise TrackerMissing("TensorBoard export needs the tensorboard package (pip install tensorboard, or the "
                             f"extra swanbench[tracking]): {exc}") from None
    return SummaryWriter, hparams


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def run_scalars(row: pd.Series) -> dict[str, float]:
    """The numeric measure, estimate, spread and annotation columns of one runs.csv row."""
    out = {}
    for name, value in row.items():
        column = schema.column(str(name))
        number = _number(value)
        if column is not None and column.role in _RUN_ROLES and number is not None:
            out[str(name)] = number
    return out


def _identity(row: pd.Series) -> dict[str, Any]:
    """Identity and hyperparameters as HParams values (strings, numbers or booleans only)."""
    out: dict[str, Any] = {}
    for key in IDENTITY_TAGS:
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[key] = value if isinstance(value, (int, float, bool, str)) else str(value)
    try:
        hparams = json.loads(row.get("optimizer_hparams") or "{}")
    except (TypeError, ValueError):
        hparams = {}
    for key, value in hparams.items():
        out[f"hp/{key}"] = value if isinstance(value, (int, float, bool, str)) else json.dumps(value)
    return out


def _clear(folder: Path) -> None:
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()


def _write_run(SummaryWriter, hparams, folder: Path, row: pd.Series, curve: pd.DataFrame | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _clear(folder)
    writer = SummaryWriter(log_dir=str(folder))
    try:
        last = 0
        if curve is not None and len(curve):
            for point in curve.sort_values("step").itertuples(index=False):
                step = int(point.step)
                last = max(last, step)
                for tag in CURVE_TAGS:
                    value = _number(getattr(point, tag, None))
                    if value is not None:
                        writer.add_scalar(f"curve/{tag}", value, step)
                tokens = _number(getattr(point, "tokens", None))
                for tag in TOKEN_TAGS:
                    value = _number(getattr(point, tag, None))
                    if value is not None and tokens is not None:
                        writer.add_scalar(f"by_tokens/{tag}", value, int(tokens))
        last = int(_number(row.get("steps_done")) or last)
        scalars = run_scalars(row)
        for name, value in scalars.items():
            writer.add_scalar(f"run/{name}", value, last)
        identity = _identity(row)
        table = "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in identity.items())
        writer.add_text("run/identity", table, last)
        metrics = {f"run/{k}": v for k, v in scalars.items() if k in ("final_eval_loss", "optimizer_state_bytes",
                                                                      "step_ms", "tokens_per_s")}
        for summary in hparams(identity, metrics):
            writer.file_writer.add_summary(summary)
    finally:
        writer.close()


def export_tensorboard(results: str | Path, log_dir: str | Path | None = None) -> list[Path]:
    """Write LOGDIR/<run_id>/ event files for every run of RESULTS (default LOGDIR: RESULTS/tensorboard);
    returns the run folders written. TableError for a missing or corrupt table, TrackerMissing without
    the tensorboard package."""
    results = Path(results)
    runs = read_table(results / schema.RUNS_FILE, required=("run_id", "optimizer"))
    curves_path = results / schema.CURVES_FILE
    curves = read_table(curves_path) if curves_path.is_file() else None
    if curves is not None and "run_id" not in curves.columns:
        raise TableError(f"{curves_path}: no run_id column, so no curve can be attributed")
    SummaryWriter, hparams = _writer_class()
    out = Path(log_dir) if log_dir is not None else results / "tensorboard"
    written = []
    for _, row in runs.drop_duplicates("run_id", keep="last").iterrows():
        curve = curves[curves["run_id"] == row["run_id"]] if curves is not None else None
        folder = out / re.sub(r"[^A-Za-z0-9_.-]", "_", str(row["run_id"]))  # hashes; a hand-made table: made safe
        _write_run(SummaryWriter, hparams, folder, row, curve)
        written.append(folder)
    return written
