"""What the command line prints: in a pipe or CI log (plain progress lines, full-width tables), --version,
validated options, -o as --out, and the suite ETA that is measured rather than guessed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swanbench.cli import app

ROOT = Path(__file__).resolve().parent.parent


def swanbench_piped(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """The CLI as a CI job runs it: a fresh process, stdout and stderr pipes (not a terminal), no COLUMNS."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "swanbench", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def test_estimate_table_is_not_folded_in_a_pipe():
    proc = swanbench_piped("estimate", "--model", "1b", "--optimizer", "adamw,swan,sinkgd", "--dtype", "bfloat16",
                           "--batch-size", "64", "--seq-len", "256")
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    # One line per optimizer, every header and name whole (80 columns would fold them: `optim…`, `sinkg d`).
    assert len(table) == 3
    assert "…" not in proc.stdout
    assert all(name in proc.stdout for name in ("optimizer", "optimizer state", "weights+state GiB", "sinkgd"))
    assert max(len(line) for line in proc.stdout.splitlines()) > 80


def test_run_in_a_pipe_prints_progress_lines_and_whole_tables(write_suite, tiny_suite_text, tmp_path):
    suite = write_suite(tiny_suite_text.replace('optimizer = ["adamw"]', 'optimizer = ["adamw", "sgd"]'))
    out = tmp_path / "piped"
    proc = swanbench_piped("run", str(suite), "--out", str(out), "--set", "defaults.steps=3", "--only",
                           "optimizer=adamw,sgd")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    # Plain lines as the runs go, no live bars: each run's start (with the suite ETA) and its end.
    assert "[1/2]" in text and "[2/2]" in text and "3 steps" in text
    assert "ETA after the first run" in text  # nothing measured yet: no invented number
    assert re.search(r"\[2/2\] .*suite ETA \d+:\d\d\)", text)  # after the first run: a measured one
    assert text.count(": ok in ") == 2
    assert "\x1b[" not in text  # no terminal control codes in a log
    summary = [line for line in text.splitlines() if line.startswith("│") and ("adamw" in line or "sgd" in line)]
    assert len(summary) == 2  # one summary row per run, never folded over two lines
    header = next(line for line in text.splitlines() if "status" in line and "optimizer" in line)
    assert "RSS MiB" in header and "eval loss" in header
    # The overrides are recorded with the command that ran.
    assert "--set defaults.steps=3" in (out / "command.txt").read_text()


def test_version_and_validated_executor():
    cli = CliRunner()
    version = cli.invoke(app, ["--version"])
    from swanbench import __version__

    assert version.exit_code == 0 and version.output.strip() == f"swanbench {__version__}"
    bad = cli.invoke(app, ["run", "quickstart", "--dry-run", "--executor", "slrum"])
    assert bad.exit_code == 2 and "slrum" in bad.output


def test_executor_choices_are_the_launchers():
    from swanbench.commands.run import Executor
    from swanbench.launch.cluster import EXECUTORS

    assert tuple(e.value for e in Executor) == EXECUTORS


def test_dash_o_means_out_in_every_command(tmp_path):
    import typer.main

    from swanbench import cli

    command = typer.main.get_command(cli.app)
    for name, sub in command.commands.items():
        for param in sub.params:
            if "-o" in getattr(param, "opts", []):
                assert "--out" in param.opts, f"swanbench {name}: -o is {param.opts}"
    path = tmp_path / "estimate.csv"
    result = CliRunner().invoke(app, ["estimate", "--model", "nano", "--optimizer", "swan", "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert path.is_file() and "swan" in path.read_text()


def test_own_command_is_recorded_for_python_dash_m():
    from swanbench.terminal import own_command

    main = str(ROOT / "swanbench" / "__main__.py")
    assert own_command([main, "run", "quickstart", "--set", "defaults.steps=50"]) == \
        "python -m swanbench run quickstart --set defaults.steps=50"
    assert own_command(["/usr/bin/swanbench", "run"]) == "swanbench run"
    assert own_command(["pytest", "-q"]) is None


# --- the ETA --------------------------------------------------------------------------------------------


def _run(optimizer: str, steps: int, seed: int = 0):
    from swanbench.suite import Cell, Run

    return Run(Cell(optimizer=optimizer, model="nano", steps=steps), seed)


def test_eta_is_unknown_until_a_run_finished_then_measured():
    from swanbench.launch.progress import EtaClock, eta_text

    runs = [_run("adamw", 10), _run("swan", 10), _run("adamw", 20, 1)]
    clock = EtaClock(pending=list(runs))
    clock.start(runs[0], now=0.0)
    clock.step(1, now=5.0)  # 5 s of start-up
    assert clock.suite_left(now=5.0) is None and eta_text(clock) == "ETA after the first run"
    clock.step(10, now=14.0)
    assert clock.end(now=14.0) == 14.0  # 1 s per step after the first
    # swan: no run of its own yet, so all finished runs: 5 s + 10 x 1 s; adamw 20 steps: 5 s + 20 x 1 s.
    assert clock.predict(runs[1]) == pytest.approx(15.0)
    assert clock.suite_left(now=14.0) == pytest.approx(15.0 + 25.0)
    clock.start(runs[1], now=14.0)
    clock.step(1, now=16.0)
    clock.step(5, now=24.0)  # swan's own rate: 2 s per step, 5 steps left
    assert clock.current_left(now=24.0) == pytest.approx(10.0)
    assert clock.suite_left(now=24.0) == pytest.approx(10.0 + 25.0)


def test_progress_lines_in_a_pipe(capsys):
    from rich.console import Console

    from swanbench.launch.progress import SuiteProgress

    runs = [_run("adamw", 4), _run("swan", 4)]
    console = Console(file=sys.stdout, width=200)  # not a terminal: plain lines
    with SuiteProgress(console, runs) as bar:
        for run in runs:
            bar.start_run(run)
            for step in range(1, 5):
                bar.on_event({"event": "step", "step": step, "steps": 4, "loss": 1.0})
            bar.on_event({"event": "eval", "step": 4, "tokens": 100, "eval_loss": 0.9})
            bar.end_run(run, "ok", None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[1/2]") and "ETA after the first run" in lines[0]
    assert any("eval loss 0.900" in line for line in lines)
    assert lines[-1].endswith("ok in 0:00") and "[2/2]" in "\n".join(lines) and "ETA 0:" in "\n".join(lines)


def test_a_run_records_machine_load_and_startup(tmp_path):
    """The columns every run writes: load average at start and end, CPU shares, where start-up went."""
    from swanbench.trackers.machine import MachineLoad, cpu_times, shares

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n")
    before = cpu_times(str(stat))
    stat.write_text("cpu  200 0 100 900 10 0 0 90 0 0\ncpu0 1 2 3\n")
    # 300 ticks passed: 150 busy (user + system), 100 idle, 50 stolen by the hypervisor.
    assert shares(before, cpu_times(str(stat))) == {"cpu_steal_pct": pytest.approx(50 / 300 * 100),
                                                    "cpu_busy_pct": pytest.approx(200 / 300 * 100)}
    assert shares(None, before) == {"cpu_steal_pct": None, "cpu_busy_pct": None}
    columns = MachineLoad().start().columns()
    assert set(columns) == {"load_avg_start", "load_avg_end", "cpu_count", "cpu_steal_pct", "cpu_busy_pct"}
    from swanbench import schema

    assert all(schema.column(c) is not None for c in [*columns, "startup_s", "startup_model_s", "run_wall_s"])


def test_startup_clock_marks_the_phases_in_order():
    from swanbench.run.worker import StartupClock

    clock = StartupClock()
    clock.mark("worker")
    clock.mark("env")
    for event in ({"event": "phase", "phase": "data"}, {"event": "phase", "phase": "model"},
                  {"event": "eval", "step": 0}, {"event": "step", "step": 1}, {"event": "step", "step": 2}):
        clock.on_event(event)
    columns = clock.columns()
    phases = ["worker", "env", "imports", "data", "model", "first_step"]
    assert [k[len("startup_"):-len("_s")] for k in columns if k.startswith("startup_") and k != "startup_s"] == phases
    assert columns["startup_s"] == pytest.approx(sum(columns[f"startup_{p}_s"] for p in phases))
    assert columns["run_wall_s"] >= columns["startup_s"] > 0
