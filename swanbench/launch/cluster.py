"""Where a suite's runs execute: this machine's subprocesses (default), or jobs through `submitit`.

`swanbench run SUITE --executor subprocess|local|slurm`:

- `subprocess` (default): the runner starts each run's worker itself, one after another (swanbench.launch.process).
- `local`: each run is a `submitit.LocalExecutor` job on this machine, still one after another (so runs do
  not share the CPU/GPU and their timings stay honest). It exercises the exact code path of `slurm`
  without a cluster: the tests use it.
- `slurm`: each run is a SLURM job through `submitit.AutoExecutor(cluster="slurm")`; all runs of the
  same resources are submitted at once as one job array (`slurm_array_parallelism` at a time) and
  collected as they finish. Needs a filesystem shared by the login and compute nodes (the output
  directory and this Python environment).

Every job runs `RunJob`: the same `swanbench.launch.process.execute(run_dir, ...)` a local run uses, on the run
directory the parent prepared (config.json). It starts the worker (torchrun for world_size > 1) with the
cell's timeout, writes the run's row, and returns its status. The parent then assembles the suite tables
exactly as for a local run, and resume works the same way (a run with a final row is never resubmitted).

Resources per job, from the cell: one task per node (torchrun starts the ranks), `gpus_per_node =
world_size` for CUDA cells (device "cuda" or "auto"; 0 for "cpu"), time limit = the cell's timeout_s plus
JOB_TIME_MARGIN_MIN minutes (so the run's own timeout fires first and is recorded). Cluster options
(partition, account, qos, constraint, mem_gb, cpus_per_task, time, ...) come from `--slurm KEY=VALUE`
flags: each becomes submitit's `slurm_KEY` parameter; they belong to the cluster, not to the suite.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from swanbench import rundir, schema
from swanbench.hints import did_you_mean
from swanbench.launch.process import execute, worker_command

EXECUTORS = ("subprocess", "local", "slurm")
SUBMITIT_FOLDER = "submitit"  # job scripts, pickles and SLURM logs, under the output directory
JOB_TIME_MARGIN_MIN = 5  # minutes beyond the cell's timeout_s: its own timeout fires (and is recorded) first
DEFAULT_ARRAY_PARALLELISM = 64


class ExecutorError(ValueError):
    """Bad executor choice or cluster option; one line."""


@dataclass(frozen=True)
class RunJob:
    """What one job runs on its node: the worker on `run_dir` under the runner's timeout; returns the status.

    Picklable (submitit sends it to the node). The worker command is chosen on the node, from the cell's
    world_size, so it uses the node's Python (the same environment on a shared filesystem).
    """

    run_dir: str
    timeout_s: float
    world_size: int = 1

    def __call__(self) -> str:
        return execute(Path(self.run_dir), self.timeout_s, worker_cmd=worker_command(self.world_size))


def parse_cluster_options(items: Sequence[str]) -> dict[str, Any]:
    """`["partition=gpu", "time=120"]` -> {"slurm_partition": "gpu", "slurm_time": 120} (ints stay ints)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("slurm_").replace("-", "_")
        if not sep or not key or not value.strip():
            raise ExecutorError(f"--slurm {item!r}: expected KEY=VALUE, e.g. partition=gpu or time=120")
        value = value.strip()
        out[f"slurm_{key}"] = int(value) if value.isdigit() else value
    return out


def cell_gpus(cell: Any, kind: str = "slurm") -> int:
    """GPUs a cell's job asks for: one per rank, unless the cell runs on the CPU.

    SLURM: device "auto" asks for GPUs (the compute node decides what auto means). Local: "auto" is
    resolved here, so a CPU-only machine asks for none.
    """
    if cell.device == "cpu":
        return 0
    if kind == "local":
        from swanbench.env import resolve_device

        return cell.world_size if resolve_device(cell.device).startswith("cuda") else 0
    return cell.world_size


def job_parameters(cell: Any, kind: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """submitit `update_parameters(...)` for one cell: time, GPUs, one task; `options` (slurm_*) on top."""
    timeout_min = math.ceil(cell.timeout_s / 60) + JOB_TIME_MARGIN_MIN
    params: dict[str, Any] = {"timeout_min": timeout_min, "gpus_per_node": cell_gpus(cell, kind)}
    if kind == "slurm":
        params.update(nodes=1, tasks_per_node=1, name=f"swanbench-{cell.optimizer}-{cell.model}",
                      slurm_array_parallelism=DEFAULT_ARRAY_PARALLELISM)
        params.update(options or {})
    return params


@dataclass
class SubmititDispatcher:
    """Runs planned runs as submitit jobs (`kind` "local" or "slurm") and reports each status as it lands.

    folder: where submitit keeps job files and logs (default OUT/submitit). options: slurm_* parameters.
    """

    kind: str
    folder: Path
    options: dict[str, Any] = field(default_factory=dict)
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("local", "slurm"):
            raise ExecutorError(f"unknown submitit executor {self.kind!r} (known: local, slurm)")
        if self.kind == "local" and self.options:
            raise ExecutorError("--slurm options need --executor slurm")
        _require_submitit(self.kind)

    def _executor(self, cell: Any):
        import submitit

        if self.kind == "local":
            executor = submitit.LocalExecutor(folder=str(self.folder))
        else:
            try:
                executor = submitit.AutoExecutor(folder=str(self.folder), cluster="slurm")
            except RuntimeError as exc:  # submitit looks for srun: not on a SLURM login node
                raise ExecutorError(f"--executor slurm: {_first_line(exc)}") from None
        try:
            executor.update_parameters(**job_parameters(cell, self.kind, self.options))
        except (ValueError, TypeError, NameError) as exc:  # submitit: NameError for an unknown parameter
            raise ExecutorError(f"--slurm: {_first_line(exc)}") from None
        return executor

    def check(self, cells: Sequence[Any]) -> None:
        """Build the executor for each distinct cell shape once (bad --slurm keys fail before anything runs)."""
        for cell in {(c.device, c.world_size, c.timeout_s): c for c in cells}.values():
            self._executor(cell)

    def run(self, planned: Sequence[Any], on_done: Callable[[Any, str], None]) -> None:
        """Submit `planned` (runner.PlannedRun with config.json written) and call on_done(p, status) per run.

        local: one job at a time (runs never share the machine). slurm: one job array per resource shape,
        all submitted up front, collected as they finish.
        """
        if self.kind == "local":
            for p in planned:
                job = self._executor(p.run.cell).submit(_job(p))
                on_done(p, _result(job, p))
            return
        jobs = []
        for group in _by_resources(planned):
            executor = self._executor(group[0].run.cell)
            with executor.batch():  # one sbatch --array for the whole group
                submitted = [executor.submit(_job(p)) for p in group]
            jobs.extend(zip(submitted, group))
        self._collect(jobs, on_done)

    def _collect(self, jobs: list[tuple[Any, Any]], on_done: Callable[[Any, str], None]) -> None:
        pending = list(jobs)
        while pending:
            still = []
            for job, p in pending:
                if job.done():
                    on_done(p, _result(job, p))
                else:
                    still.append((job, p))
            pending = still
            if pending:
                time.sleep(self.poll_s)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _job(p: Any) -> RunJob:
    cell = p.run.cell
    return RunJob(str(Path(p.run_dir).resolve()), float(cell.timeout_s), int(cell.world_size))


def _by_resources(planned: Sequence[Any]) -> list[list[Any]]:
    groups: dict[tuple, list[Any]] = {}
    for p in planned:
        cell = p.run.cell
        groups.setdefault((cell_gpus(cell), cell.timeout_s), []).append(p)
    return list(groups.values())


def _result(job: Any, p: Any) -> str:
    """The job's status string; a job that died outside the run (preempted, node failure, scheduler
    time limit) is recorded in the run's row as crashed, with submitit's error."""
    try:
        return str(job.result())
    except Exception as exc:  # submitit.core.utils.FailedJobError, UncompletedJobError, ...
        status = rundir.run_status(Path(p.run_dir))
        if status is not None:  # the run wrote its row before the job was lost
            return status
        message = " ".join(str(exc).split())[-1500:]
        return rundir.record_failure(Path(p.run_dir), schema.CRASHED, f"job {job.job_id} failed: {message}")


def _require_submitit(kind: str) -> None:
    """submitit is optional at install (the `cluster` extra): say so in one line before anything runs."""
    import importlib.util

    if importlib.util.find_spec("submitit") is None:
        raise ExecutorError(f"--executor {kind} needs the package submitit: pip install 'swanbench[cluster]' "
                            "(or run without --executor: worker processes on this machine)")


def make_dispatcher(kind: str, out_dir: Path, cluster_options: Sequence[str] = ()) -> SubmititDispatcher | None:
    """None for the default subprocess runner; a SubmititDispatcher for local/slurm."""
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {kind!r}{did_you_mean(kind, EXECUTORS)} "
                            f"(known: {', '.join(EXECUTORS)})")
    options = parse_cluster_options(cluster_options)
    if kind == "subprocess":
        if options:
            raise ExecutorError("--slurm options need --executor slurm")
        return None
    return SubmititDispatcher(kind, Path(out_dir) / SUBMITIT_FOLDER, options)
