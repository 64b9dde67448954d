"""Dispatch through submitit: the local executor runs a small suite end to end (and resumes); SLURM job
parameters come from the cell; bad executors and cluster options are one error line."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from swanbench.cli import app
from swanbench.launch import cluster as executors
from swanbench.suite import Cell


def test_local_executor_runs_a_suite_end_to_end_then_resumes(write_suite, tiny_suite_text, tmp_path):
    pytest.importorskip("submitit")  # the `cluster` extra (installed with `test`)
    # two runs, two jobs (about 20 s each on 2 busy cores)
    suite = write_suite(tiny_suite_text.replace('optimizer = ["adamw"]', 'optimizer = ["adamw", "sgd"]'))
    out = tmp_path / "out"
    first = CliRunner().invoke(app, ["run", str(suite), "--out", str(out), "--executor", "local"])
    assert first.exit_code == 0, first.output
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["optimizer"]) == ["adamw", "sgd"] and (runs["status"] == "ok").all()
    assert (runs["final_eval_loss"] > 0).all() and (runs["step_ms"] > 0).all()
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["run_id"]) == set(runs["run_id"])
    # each run was a submitit job: its pickled job, result and logs are kept beside the tables
    job_files = list((out / executors.SUBMITIT_FOLDER).glob("*_result.pkl"))
    assert len(job_files) == 2
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/run.csv")}

    again = CliRunner().invoke(app, ["run", str(suite), "--out", str(out), "--executor", "local"])
    assert again.exit_code == 0, again.output
    assert "2 of 2 runs already complete" in " ".join(again.output.split())
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing was resubmitted
    assert len(list((out / executors.SUBMITIT_FOLDER).glob("*_result.pkl"))) == 2


def _cell(**kw) -> Cell:
    base = dict(optimizer="swan", model="1b", device="auto", timeout_s=3600.0)
    base.update(kw)
    return Cell(**base)


def test_job_parameters_come_from_the_cell():
    gpu = executors.job_parameters(_cell(world_size=4, parallelism="fsdp"), "slurm",
                                   {"slurm_partition": "gpu", "slurm_array_parallelism": 8})
    assert gpu["gpus_per_node"] == 4 and gpu["tasks_per_node"] == 1 and gpu["nodes"] == 1
    assert gpu["timeout_min"] == 60 + executors.JOB_TIME_MARGIN_MIN  # the run's own timeout fires first
    assert gpu["slurm_partition"] == "gpu" and gpu["slurm_array_parallelism"] == 8
    cpu = executors.job_parameters(_cell(device="cpu", world_size=2, parallelism="ddp", timeout_s=90.0), "local")
    assert cpu == {"timeout_min": 2 + executors.JOB_TIME_MARGIN_MIN, "gpus_per_node": 0}
    # "auto": a SLURM job asks for GPUs (the node decides); a local job only if this machine has CUDA
    import torch

    assert executors.cell_gpus(_cell(world_size=2, parallelism="ddp"), "slurm") == 2
    assert executors.cell_gpus(_cell(world_size=2, parallelism="ddp"), "local") == (
        2 if torch.cuda.is_available() else 0)


def test_cluster_options_parse_into_submitit_names():
    assert executors.parse_cluster_options(["partition=gpu", "time=120", "slurm_qos=high"]) == {
        "slurm_partition": "gpu", "slurm_time": 120, "slurm_qos": "high"}
    with pytest.raises(executors.ExecutorError, match="KEY=VALUE"):
        executors.parse_cluster_options(["partition"])


@pytest.fixture
def fake_srun(tmp_path, monkeypatch) -> Path:
    """A do-nothing `srun` on PATH: submitit's SLURM executor can be built and configured, never submit."""
    folder = tmp_path / "bin"
    folder.mkdir()
    srun = folder / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return srun


def test_slurm_options_are_checked_before_anything_runs(fake_srun, tmp_path):
    pytest.importorskip("submitit")
    dispatcher = executors.make_dispatcher("slurm", tmp_path, ["partition=gpu", "account=ml"])
    dispatcher.check([_cell(world_size=2, parallelism="ddp")])  # valid: no error
    bad = executors.make_dispatcher("slurm", tmp_path, ["partitoin=gpu"])
    with pytest.raises(executors.ExecutorError, match="Unknown argument 'partitoin'"):
        bad.check([_cell()])


def test_executor_mistakes_are_one_line(write_suite, tiny_suite_text, tmp_path, monkeypatch):
    pytest.importorskip("submitit")  # without it, --executor slurm fails earlier (the test below)
    suite = str(write_suite(tiny_suite_text))
    runner = CliRunner()
    cases = [
        (["--executor", "slurn"], "'slurn' is not one of"),  # Typer's own check of the choices
        (["--slurm", "partition=gpu"], "--slurm options need --executor slurm"),
        (["--executor", "local", "--slurm", "partition=gpu"], "--slurm options need --executor slurm"),
    ]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no srun here: not a SLURM login node
    cases.append((["--executor", "slurm"], "srun"))
    for args, expect in cases:
        result = runner.invoke(app, ["run", suite, "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert expect in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x" / "runs.csv").exists()


def test_a_lost_job_is_recorded_as_crashed(write_suite, tiny_suite_text, tmp_path):
    """A job that dies outside the run (node failure, preemption) leaves a crashed row, which resume retries."""
    from swanbench import runner
    from swanbench.suite import load_suite

    suite = load_suite(write_suite(tiny_suite_text))
    (planned,) = runner.plan(suite, tmp_path)
    runner.write_config(suite, planned.run, planned.run_dir)

    def lost():
        raise RuntimeError("Job 1234 (task: 0) with path ... has not produced any output (state: NODE_FAIL)")

    job = SimpleNamespace(result=lost, job_id="1234")
    assert executors._result(job, planned) == "crashed"
    row = pd.read_csv(planned.run_dir / "run.csv").iloc[0]
    assert row["status"] == "crashed" and "NODE_FAIL" in row["error"] and row["optimizer"] == "adamw"
    assert not runner.plan(suite, tmp_path)[0].skip


def test_executors_without_submitit_say_which_extra(write_suite, tiny_suite_text, tmp_path, monkeypatch):
    """submitit is optional: without it, --executor local/slurm is one line naming the extra; nothing runs."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "submitit" else real_find_spec(name, *a, **k))
    suite = str(write_suite(tiny_suite_text))
    for kind in ("local", "slurm"):
        result = CliRunner().invoke(app, ["run", suite, "--out", str(tmp_path / "x"), "--executor", kind])
        assert result.exit_code == 2, result.output
        assert f"--executor {kind} needs the package submitit" in result.output
        assert "swanbench[cluster]" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x" / "runs.csv").exists()
