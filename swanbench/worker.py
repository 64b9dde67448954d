"""The child process of one run: `python -m swanbench.worker RUN_DIR`.

A fresh process per run, so one run's allocator state, threads and caches cannot leak into the next.
The parent (swanbench.runner) writes RUN_DIR/config.json; the worker writes, atomically:

- env.json     the environment (versions, device, host, git revision);
- curves.csv   one row per eval point, rewritten after every eval (a kill keeps the curve so far);
- run.csv      one row with every runs.csv column; its existence marks the run complete.

Protocol: progress events go to stdout as lines `@swanbench {json}`; logs and tracebacks go to stderr
(the parent writes them to RUN_DIR/log.txt and keeps its tail as the error of a crashed run).
Exit code 0 when a row was written (whatever its status); non-zero on a crash.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

EVENT_PREFIX = "@swanbench "
CONFIG_FILE, ENV_FILE, ROW_FILE, CURVES_FILE, LOG_FILE = "config.json", "env.json", "run.csv", "curves.csv", "log.txt"
STATUS_CRASHED, STATUS_TIMEOUT = "crashed", "timeout"


def identity_row(config: dict[str, Any], env: dict[str, Any] | None) -> dict[str, Any]:
    """The identity columns of a run (runs.csv and curves.csv) from its config.json and env.json."""
    from swanbench import __version__
    from swanbench.tables import SCHEMA_VERSION

    cell, env = config["cell"], env or {}
    return {
        "schema_version": SCHEMA_VERSION, "suite": config["suite"], "run_id": config["run_id"],
        "cell_id": config["cell_id"], "optimizer": cell["optimizer"], "model": cell["model"],
        "params": config.get("params"), "device": env.get("device") or cell["device"],
        "device_name": env.get("device_name"), "world_size": cell["world_size"], "dtype": cell["dtype"],
        "parallelism": cell.get("parallelism"), "rank": "max",  # per-rank rows: rank "0", "1", ...
        "seq_len": cell["seq_len"], "batch_size": cell["batch_size"], "seed": config["seed"],
        "swanbench_version": __version__, "torch_version": env.get("torch_version"),
        "git_rev": env.get("git_rev"), "hostname": env.get("hostname"), "cpu_name": env.get("cpu_name"),
        "torch_threads": env.get("torch_threads"),
    }


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def write_row(run_dir: Path, row: dict[str, Any]) -> Path:
    from swanbench.tables import RUNS_COLUMNS, write_rows_atomic

    return write_rows_atomic(Path(run_dir) / ROW_FILE, [row], RUNS_COLUMNS)


def write_curve(run_dir: Path, identity: dict[str, Any], curve: list[dict[str, Any]]) -> Path:
    from swanbench.tables import CURVES_COLUMNS, write_rows_atomic

    ident = {k: v for k, v in identity.items() if k not in ("status", "rank")}
    return write_rows_atomic(Path(run_dir) / CURVES_FILE, [{**ident, **point} for point in curve], CURVES_COLUMNS)


def event_writer(stream) -> Callable[[dict], None]:
    """Progress events as prefixed JSON lines on `stream` (flushed: the parent reads them live)."""
    def emit(event: dict) -> None:
        stream.write(EVENT_PREFIX + json.dumps(event, default=float) + "\n")
        stream.flush()

    return emit


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def estimate_columns(cell: Any, device: str, row: dict[str, Any]) -> dict[str, Any]:
    """The analytic estimate of this run (`swanbench estimate`) and how much of the measured peak it misses."""
    from swanbench.estimate import EstimateError, estimate_run, unexplained_bytes

    try:
        cols = estimate_run(cell.model, cell.optimizer, cell.dtype, cell.batch_size, cell.seq_len, device,
                            grad_accum=cell.grad_accum, world_size=cell.world_size,
                            parallelism=cell.parallelism)  # per rank on several
    except EstimateError as exc:  # e.g. an optimizer the estimator has no declaration for
        return {"estimate_error": str(exc)}
    cols["unexplained_bytes"] = unexplained_bytes(row, cols["estimate_bytes"])
    return cols


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads (0 keeps torch's default). Before any work: it fixes the kernels' plans.

    On a small shared CPU, two spinning OpenMP threads fighting a busy neighbour can make a whitening step
    hundreds of times slower; a suite that compares step times on such a machine sets `threads = 1`.
    """
    if threads:
        import torch

        torch.set_num_threads(threads)


def run(run_dir: Path, events) -> int:
    """Run the configured (cell, seed) and write its tables; returns the process exit code."""
    from swanbench import env as envmod
    from swanbench.suite import Cell

    config = json.loads((run_dir / CONFIG_FILE).read_text())
    cell = Cell.from_dict(config["cell"])
    set_threads(cell.threads)
    # Under torchrun (world_size > 1) every rank runs this; rank 0 speaks for the run (env, events, curve),
    # every rank writes its own row (rank-<r>.csv) and the parent combines them into run.csv.
    from swanbench.distributed import launched_rank, shutdown

    rank = launched_rank() if cell.world_size > 1 else None
    main_rank = rank in (None, 0)
    env = envmod.collect(cell.device)
    if main_rank:
        write_json_atomic(run_dir / ENV_FILE, env)
    log(f"run {config['run_id']}: {cell.optimizer} on {cell.model}, seed {config['seed']}, device {env['device']}"
        + (f", rank {rank} of {cell.world_size} ({cell.parallelism})" if rank is not None else ""))
    identity = identity_row(config, env)
    emit = event_writer(events) if main_rank else (lambda event: None)
    on_curve = (lambda curve: write_curve(run_dir, identity, curve)) if main_rank else (lambda curve: None)
    try:
        from swanbench.train import train

        outcome = train(cell, config["seed"], run_dir, emit, on_curve=on_curve)
    except Exception as exc:  # a crash is a result too: record it, then exit non-zero
        traceback.print_exc(file=sys.stderr)
        _write_own_row(run_dir, rank, {**identity, "status": STATUS_CRASHED,
                                       "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return 1
    identity["params"] = outcome.measures.get("params", identity["params"])
    if main_rank:
        write_curve(run_dir, identity, outcome.curve)
    row = {**identity, **outcome.measures, "status": outcome.status, "error": outcome.error}
    row.update(estimate_columns(cell, identity["device"], row))
    _write_own_row(run_dir, rank, row)
    log(f"status {outcome.status}" + (f": {outcome.error}" if outcome.error else ""))
    shutdown()
    # An OOM on one rank leaves the others waiting in a collective: a non-zero exit makes torchrun stop them.
    return 0 if rank is None or outcome.status in ("ok", "diverged") else 3


def _write_own_row(run_dir: Path, rank: int | None, row: dict[str, Any]) -> Path:
    """run.csv for a one-rank run; rank-<r>.csv for a rank of a multi-rank run (combined by the parent)."""
    if rank is None:
        return write_row(run_dir, row)
    from swanbench.distributed import rank_row_file
    from swanbench.tables import RUNS_COLUMNS, write_rows_atomic

    return write_rows_atomic(Path(run_dir) / rank_row_file(rank), [row], RUNS_COLUMNS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not (Path(argv[0]) / CONFIG_FILE).is_file():
        print("usage: python -m swanbench.worker RUN_DIR (with RUN_DIR/config.json)", file=sys.stderr)
        return 2
    events = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries go to the log, not into the event stream
    code = run(Path(argv[0]), events)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A rank's row is written; gloo's threads can abort the interpreter's static teardown (SIGABRT,
        # "terminate called without an active exception") while a peer is still shutting down, which
        # torchrun would report as a failed rank. Leave without that teardown.
        events.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
