"""The process of one run: `python -m swanbench.run.worker RUN_DIR` (under torchrun: one per rank).

A fresh process per run, so one run's allocator state, threads and caches cannot leak into the next.
It follows the run-directory protocol (`swanbench.rundir`): reads config.json, writes env.json, the
curve after every eval, and the run's row (run.csv; a rank of a multi-rank run writes rank-<r>.csv and the
launcher combines them). Progress events go to stdout, logs and tracebacks to stderr.
Exit code 0 when a row was written (whatever its status); non-zero on a crash.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from swanbench import rundir, schema


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat starttime against /proc/uptime), or None."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces: split after it
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime is field 22 of the line
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class StartupClock:
    """Where a run's start-up goes, from the process's own start to its first training step (seconds).

    Marks: `worker` (interpreter and the worker's imports), `env` (torch, versions, git, native kernels),
    then the worker's events: `imports` (up to the data phase: the training modules, transformers),
    `data` (tokens loaded or read from the cache), `model` (model, optimizer, meter and the step-0 eval),
    `first_step` (the first, untimed warm-up step). `columns()` gives `startup_<mark>_s`, their sum
    `startup_s` and `run_wall_s` (the whole process until now).
    """

    EVENTS = {("phase", "data"): "imports", ("phase", "model"): "data", ("eval", None): "model",
              ("step", None): "first_step"}

    def __init__(self) -> None:
        age = process_age_s()
        self.origin = time.perf_counter() - (age if age is not None else 0.0)
        self.marks: dict[str, float] = {}
        self._last = self.origin

    def mark(self, name: str) -> None:
        if name not in self.marks:
            now = time.perf_counter()
            self.marks[name], self._last = now - self._last, now

    def on_event(self, event: dict) -> None:
        kind = event.get("event")
        name = self.EVENTS.get((kind, event.get("phase") if kind == "phase" else None))
        if name is not None:
            self.mark(name)

    def columns(self) -> dict[str, Any]:
        cols: dict[str, Any] = {f"startup_{k}_s": v for k, v in self.marks.items()}
        if "first_step" in self.marks:
            cols["startup_s"] = sum(self.marks.values())
        cols["run_wall_s"] = time.perf_counter() - self.origin
        return cols


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def estimate_columns(cell: Any, device: str, row: dict[str, Any]) -> dict[str, Any]:
    """The analytic estimate of this run (`swanbench estimate`) and how much of the measured peak it misses."""
    from swanbench.estimate import EstimateError, estimate_run, unexplained_bytes

    try:
        cols = estimate_run(cell.model, cell.optimizer, cell.dtype, cell.batch_size, cell.seq_len, device,
                            grad_accum=cell.grad_accum, world_size=cell.world_size,
                            parallelism=cell.parallelism, hparams=cell.hparams_dict())  # per rank on several
    except EstimateError as exc:  # e.g. an optimizer that declares no state: "not declared"
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


def set_reproducible(cell: Any, seed: int) -> None:
    """Everything a rerun needs to reproduce this run bit for bit, set before any work (env.json records
    what decides it: `torch_threads`, `cpu_capability`, `deterministic_algorithms`, the thread variables).

    On CPU a rerun on the same machine type (the same `cpu_capability`, i.e. the same vectorised kernels),
    with the same torch build and thread count, gives the same losses to the last bit: the kernels a run
    uses there split their work by the thread count alone, and every source of randomness is seeded (torch
    here and in `train`, numpy's generators by the seed, Python's `random`); tests/test_reproducible.py
    checks it. Another thread count or CPU type sums in another order: the losses then agree to about 1e-3
    nats after 100 steps, not bit for bit (docs/quality.md). torch's deterministic-algorithms mode is left
    off: it fills every new tensor (slower steps) and changed how the profiler classifies the CI suite's
    memory (activations read as unclassified), the very measures this harness reports.
    """
    import random

    import numpy as np
    import torch

    set_threads(cell.threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(run_dir: Path, events, clock: StartupClock | None = None) -> int:
    """Run the configured (cell, seed) and write its tables; returns the process exit code."""
    from swanbench import env as envmod
    from swanbench.suite import Cell

    from swanbench.trackers.machine import MachineLoad

    clock = clock or StartupClock()
    clock.mark("worker")
    load = MachineLoad().start()
    config = json.loads((run_dir / rundir.CONFIG_FILE).read_text())
    cell = Cell.from_dict(config["cell"])
    set_reproducible(cell, config["seed"])
    # Under torchrun (world_size > 1) every rank runs this; rank 0 speaks for the run (env, events, curve),
    # every rank writes its own row (rank-<r>.csv) and the parent combines them into run.csv.
    from swanbench.run.ranks import launched_rank, shutdown

    rank = launched_rank() if cell.world_size > 1 else None
    main_rank = rank in (None, 0)
    env = envmod.collect(cell.device)
    clock.mark("env")
    if main_rank:
        rundir.write_json_atomic(run_dir / rundir.ENV_FILE, env)
    log(f"run {config['run_id']}: {cell.optimizer} on {cell.model}, seed {config['seed']}, device {env['device']}"
        + (f", rank {rank} of {cell.world_size} ({cell.parallelism})" if rank is not None else ""))
    identity = rundir.identity_row(config, env)
    write_event = rundir.event_writer(events) if main_rank else (lambda event: None)

    def emit(event: dict) -> None:
        clock.on_event(event)
        write_event(event)

    on_curve = (lambda curve: rundir.write_curve(run_dir, identity, curve)) if main_rank else (lambda curve: None)
    try:
        from swanbench.run.train import train

        outcome = train(cell, config["seed"], run_dir, emit, on_curve=on_curve)
    except Exception as exc:  # a crash is a result too: record it, then exit non-zero
        traceback.print_exc(file=sys.stderr)
        _write_own_row(run_dir, rank, {**identity, **load.columns(), **clock.columns(), "status": schema.CRASHED,
                                       "error": f"{type(exc).__name__}: {exc}"[:rundir.ERROR_CHARS]})
        return 1
    identity["params"] = outcome.measures.get("params", identity["params"])
    if main_rank:
        rundir.write_curve(run_dir, identity, outcome.curve)
    row = {**identity, **outcome.measures, "status": outcome.status, "error": outcome.error}
    row.update(estimate_columns(cell, identity["device"], row))
    row.update({**load.columns(), **clock.columns()})
    _write_own_row(run_dir, rank, row)
    log(f"status {outcome.status}" + (f": {outcome.error}" if outcome.error else ""))
    shutdown()
    # An OOM on one rank leaves the others waiting in a collective: a non-zero exit makes torchrun stop them.
    return 0 if rank is None or outcome.status in (schema.OK, schema.DIVERGED) else 3


def _write_own_row(run_dir: Path, rank: int | None, row: dict[str, Any]) -> Path:
    """run.csv for a one-rank run; rank-<r>.csv for a rank of a multi-rank run (combined by the launcher)."""
    return rundir.write_row(run_dir, row) if rank is None else rundir.write_rank_row(run_dir, rank, row)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not (Path(argv[0]) / rundir.CONFIG_FILE).is_file():
        print("usage: python -m swanbench.run.worker RUN_DIR (with RUN_DIR/config.json)", file=sys.stderr)
        return 2
    events = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries go to the log, not into the event stream
    code = run(Path(argv[0]), events, StartupClock())
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
