"""Launching runs: the second stage of the flow (suite -> launch -> run -> measure -> analyse).

- `process`: one run on this machine, its worker in a fresh process or torchrun over its ranks, under a
  timeout; the run's folder always ends with a row.
- `cluster`: the same runs sent to submitit (a local executor, or SLURM job arrays).
"""

from swanbench.launch.process import WORKER_CMD, cell_worker_cmd, execute, worker_command

__all__ = ["WORKER_CMD", "cell_worker_cmd", "execute", "worker_command"]
