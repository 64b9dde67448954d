"""Start one run on this machine: its worker in a fresh process (or torchrun over its ranks), under a timeout.

`execute(run_dir, timeout_s)` is the whole launch of one run. Whatever happens, the run's folder ends with a
row (`swanbench.rundir`): the worker's own, the ranks' rows combined, or a failure row this module writes
(timeout: killed after `timeout_s`; crashed: the worker exited without a row, with the tail of its log).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from swanbench import rundir, schema

WORKER_MODULE = "swanbench.run.worker"
WORKER_CMD = (sys.executable, "-m", WORKER_MODULE)
TORCHRUN = ("-m", "torch.distributed.run", "--standalone")


def worker_command(world_size: int, worker_module: str = WORKER_MODULE, python: str = sys.executable) -> list[str]:
    """The command that runs one run's worker on `world_size` processes (RUN_DIR is appended by the caller).

    world_size 1: the plain worker process. More: torchrun on this node (`--standalone` picks a free
    rendezvous port, so several cells may start at once), one process per rank.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if world_size == 1:
        return [python, "-m", worker_module]
    return [python, *TORCHRUN, "--nproc-per-node", str(world_size), "-m", worker_module]


def cell_worker_cmd(cell, worker_cmd: Sequence[str] = WORKER_CMD) -> Sequence[str]:
    """The worker command for a cell: torchrun over world_size ranks when > 1 (unless a test injects its own)."""
    if cell.world_size > 1 and tuple(worker_cmd) == WORKER_CMD:
        return worker_command(cell.world_size)
    return worker_cmd


def _tail(path: Path, chars: int = rundir.ERROR_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:].strip()


def _read_events(stream, on_event: Callable[[dict], None]) -> None:
    """Forward the worker's progress events (other stdout lines are ignored: logs go to stderr)."""
    for line in stream:
        event = rundir.parse_event(line)
        if event is not None:
            on_event(event)


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGKILL if the parent dies, so a killed suite leaves no orphan."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: a killed parent may leave the worker to finish on its own


def _kill(proc: subprocess.Popen) -> None:
    """Kill the worker and anything it started (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def _spawn(run_dir: Path, timeout_s: float, on_event: Callable[[dict], None], cmd: Sequence[str]) -> tuple[int, bool]:
    """Run the command on run_dir with its log in log.txt; returns (exit code, timed out)."""
    with open(run_dir / rundir.LOG_FILE, "w") as log:
        # A new session: Ctrl-C in the terminal reaches only the parent, which then kills the worker itself.
        proc = subprocess.Popen([*cmd, str(run_dir)], stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=_die_with_parent)
        reader = threading.Thread(target=_read_events, args=(proc.stdout, on_event), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill(proc)  # no-op when it exited; on Ctrl-C or a timeout nothing is left running
        reader.join(timeout=5)
    return proc.returncode, timed_out


def execute(run_dir: Path, timeout_s: float, on_event: Callable[[dict], None] = lambda e: None,
            worker_cmd: Sequence[str] = WORKER_CMD) -> str:
    """Run the worker on run_dir; enforce the timeout; make sure a row exists. Returns the run's status."""
    run_dir = Path(run_dir)
    code, timed_out = _spawn(run_dir, timeout_s, on_event, worker_cmd)
    world_size = rundir.world_size_of(run_dir)
    if world_size > 1:
        rundir.combine_rank_rows(run_dir, world_size)
    status = rundir.run_status(run_dir)
    if timed_out:
        return rundir.record_failure(run_dir, schema.TIMEOUT, f"killed after timeout_s = {timeout_s:g} s")
    if status is None:
        error = _tail(run_dir / rundir.LOG_FILE) or f"worker exited with code {code} and no output"
        return rundir.record_failure(run_dir, schema.CRASHED, f"exit code {code}: {error}")
    return status
